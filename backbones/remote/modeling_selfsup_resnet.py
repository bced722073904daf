"""selfsup's ResNet export: transformers' ResNetModel with a configurable stem (kernel, stride,
max-pool), for ResNets with the CIFAR stem (3x3 stride-1 convolution, no max-pool). Same weight names and outputs as
ResNetModel.
selfsup's export copies this file next to the weights; it needs only torch and transformers:
AutoModel.from_pretrained(DIR, trust_remote_code=True)."""
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention
from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetEncoder


class SelfsupResNetConfig(PretrainedConfig):
    model_type = "selfsup_resnet"

    def __init__(self, num_channels=3, embedding_size=64, hidden_sizes=(64, 128, 256, 512), depths=(2, 2, 2, 2),
                 layer_type="basic", hidden_act="relu", downsample_in_first_stage=False,
                 downsample_in_bottleneck=False, embedding_kernel_size=3, embedding_stride=1,
                 embedding_pooling=False, **kwargs):
        self.num_channels, self.embedding_size = num_channels, embedding_size
        self.hidden_sizes, self.depths = list(hidden_sizes), list(depths)
        self.layer_type, self.hidden_act = layer_type, hidden_act
        self.downsample_in_first_stage = downsample_in_first_stage
        self.downsample_in_bottleneck = downsample_in_bottleneck
        self.embedding_kernel_size, self.embedding_stride = embedding_kernel_size, embedding_stride
        self.embedding_pooling = embedding_pooling
        super().__init__(**kwargs)


class SelfsupResNetEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embedder = ResNetConvLayer(config.num_channels, config.embedding_size,
                                        kernel_size=config.embedding_kernel_size, stride=config.embedding_stride,
                                        activation=config.hidden_act)
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if config.embedding_pooling else nn.Identity()
        self.num_channels = config.num_channels

    def forward(self, pixel_values):
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError("the channel dimension of the pixel values does not match the configuration")
        return self.pooler(self.embedder(pixel_values))


class SelfsupResNetPreTrainedModel(PreTrainedModel):
    config_class = SelfsupResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    _no_split_modules = ["ResNetConvLayer", "ResNetShortCut"]

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SelfsupResNetModel(SelfsupResNetPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embedder = SelfsupResNetEmbeddings(config)
        self.encoder = ResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        self.post_init()

    def forward(self, pixel_values, output_hidden_states=None, return_dict=None, **kwargs):
        output_hidden_states = (output_hidden_states if output_hidden_states is not None
                                else self.config.output_hidden_states)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.encoder(self.embedder(pixel_values), output_hidden_states=output_hidden_states,
                               return_dict=True)
        last = outputs.last_hidden_state
        pooled = self.pooler(last)
        if not return_dict:
            return (last, pooled) + ((outputs.hidden_states,) if output_hidden_states else ())
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=last, pooler_output=pooled,
                                                        hidden_states=outputs.hidden_states)
