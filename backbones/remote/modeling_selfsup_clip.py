"""selfsup's CLIP / SigLIP export for a ResNet image tower: the image tower is selfsup's ResNet class (the sibling
file ``modeling_selfsup_resnet.py``, which the export copies beside this one), the text tower transformers'
CLIPTextModel / SiglipTextModel, with CLIPModel's outputs. Needs only torch and transformers:
AutoModel.from_pretrained(DIR, trust_remote_code=True)."""
import torch
from .modeling_selfsup_resnet import SelfsupResNetConfig, SelfsupResNetModel
from torch import nn
from transformers import (CLIPTextConfig, CLIPTextModel, PretrainedConfig, PreTrainedModel, SiglipTextConfig,
                          SiglipTextModel)
from transformers.models.clip.modeling_clip import CLIPOutput


class SelfsupCLIPConfig(PretrainedConfig):
    model_type = "selfsup_clip"

    def __init__(self, vision_config=None, text_config=None, projection_dim=512, logit_scale_init_value=2.6592,
                 **kwargs):
        self.vision_config, self.text_config = dict(vision_config or {}), dict(text_config or {})
        self.projection_dim, self.logit_scale_init_value = projection_dim, logit_scale_init_value
        super().__init__(**kwargs)


class SelfsupSiglipConfig(SelfsupCLIPConfig):
    model_type = "selfsup_siglip"


class SelfsupCLIPModel(PreTrainedModel):
    """A ResNet image tower (ResNetModel's layout, configurable stem) and CLIP's (or SigLIP's) text tower;
    CLIPModel's outputs. The sigmoid loss and a logit bias for model_type selfsup_siglip."""
    config_class = SelfsupCLIPConfig
    base_model_prefix = "selfsup_clip"

    def __init__(self, config):
        super().__init__(config)
        self.sigmoid = config.model_type == "selfsup_siglip"
        self.vision_model = SelfsupResNetModel(SelfsupResNetConfig(**config.vision_config))
        text_cls, text_cfg = (SiglipTextModel, SiglipTextConfig) if self.sigmoid else (CLIPTextModel, CLIPTextConfig)
        self.text_model = text_cls(text_cfg(**config.text_config))
        width = config.vision_config["hidden_sizes"][-1]
        self.visual_projection = nn.Linear(width, config.projection_dim, bias=False)
        if not self.sigmoid:
            self.text_projection = nn.Linear(config.text_config["hidden_size"], config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if self.sigmoid else None
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)

    def get_image_features(self, pixel_values, **kwargs):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output.flatten(1))

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        pooled = self.text_model(input_ids=input_ids, attention_mask=attention_mask,
                                 position_ids=position_ids).pooler_output
        return pooled if self.sigmoid else self.text_projection(pooled)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None, return_loss=None,
                **kwargs):
        image = self.get_image_features(pixel_values)
        text = self.get_text_features(input_ids, attention_mask, position_ids)
        image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
        logits_per_text = text @ image.t() * self.logit_scale.exp()
        if self.sigmoid:
            logits_per_text = logits_per_text + self.logit_bias
        loss = None
        if return_loss:
            n = len(logits_per_text)
            if self.sigmoid:
                z = 2 * torch.eye(n, device=image.device) - 1
                loss = -nn.functional.logsigmoid(z * logits_per_text).sum(-1).mean()
            else:
                labels = torch.arange(n, device=image.device)
                loss = (nn.functional.cross_entropy(logits_per_text, labels)
                        + nn.functional.cross_entropy(logits_per_text.t(), labels)) / 2
        return CLIPOutput(loss=loss, logits_per_image=logits_per_text.t(), logits_per_text=logits_per_text,
                          text_embeds=text, image_embeds=image)


class SelfsupSiglipModel(SelfsupCLIPModel):
    config_class = SelfsupSiglipConfig
