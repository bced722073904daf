"""Export helpers shared by every family: model cards and upload to the HF Hub.

Each family converts its objective to a native ``transformers`` model in its own module (``selfsup.objectives.masked.hf_bert``);
this module writes what goes around it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.errors import SelfsupError


def write_model_card(export_dir: str | Path, *, title: str, pipeline_tag: str, summary: str,
                     metrics: dict[str, Any], run: dict[str, Any], usage: str, tags: tuple[str, ...] = ()) -> Path:
    """``README.md`` with Hub metadata, what was trained on what, the figures and a usage snippet."""
    tag_lines = "\n".join(f"- {t}" for t in ("selfsup", "self-supervised", *tags))
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(shown.items()))
    card = f"""---
library_name: transformers
pipeline_tag: {pipeline_tag}
tags:
{tag_lines}
---

# {title}

{summary}

Trained with [selfsup](https://pypi.org/project/selfsup/).

## Training

```json
{json.dumps(run, indent=2, sort_keys=True, default=str)}
```

## Results

| metric | value |
|---|---|
{rows}

## Use

```python
{usage.strip()}
```
"""
    path = Path(export_dir) / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def push_to_hub(export_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload ``export_dir`` to ``repo_id``; a one-line error (and the local export left as it is) on failure."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(export_dir), repo_id=repo_id,
                                 commit_message="Upload model trained with selfsup")
    except Exception as err:  # noqa: BLE001 - offline, no token, no permission: all one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SelfsupError(f"could not push to the Hub as {repo_id} ({type(err).__name__}: {first}); "
                           f"the local export in {export_dir} is intact") from None
    return str(getattr(info, "commit_url", repo_id))
