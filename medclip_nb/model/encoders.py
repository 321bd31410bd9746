"""Image-report dual encoders.

Every model has `encode_image(pixel_values)` and `encode_text(input_ids, attention_mask)`,
both returning L2-normalised `[B, embed_dim]`, and `forward(...) -> dict(image_embeds,
text_embeds, logit_scale, logit_bias)` (docs/architecture.md). `logit_scale` is the multiplier
exp(log_scale) with the learnable log value clamped to [0, ln 100]; `logit_bias` is a
learnable scalar for the SigLIP loss, else None.

- `SimpleMedCLIPModel`: the seed script's baseline (small CNN, 50 ASCII codes / 255 through
  one Linear layer).
- `MedCLIPModel`: an image backbone (torchvision's, or the small CPU CNN `SmallCNN`) and one
  of three text encoders:
  `TransformerTextEncoder` (trained from scratch on our tokenizer), `BertTextEncoder` (a local
  Hugging Face BERT-family folder, optional `transformers` package), `PrecomputedTextEncoder`
  (the seed's clip_text_features.json).

Weight decay: the trainer groups parameters. The ones that should not decay are exactly those
with fewer than two dimensions: biases, BatchNorm / LayerNorm weights, `logit_scale` and
`logit_bias`.

Nothing here downloads: pretrained image weights come from the local torch hub cache and BERT
folders are read with `local_files_only=True`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from medclip_nb.config import VISION_BACKBONES
from medclip_nb.errors import CheckpointError, ConfigError, DataError
from medclip_nb.files import read_text_limited
from medclip_nb.model.losses import LOG_MAX_LOGIT_SCALE, LOSS_KINDS
from medclip_nb.text import from_local_folder, import_transformers, local_hf_folder

CLIP_INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP / MedCLIP
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0
# clip_text_features.json of all MIMIC-CXR reports is about 2 GB of JSON text.
MAX_FEATURES_BYTES = 4 << 30


# ---- shared contrastive head -----------------------------------------------------------------
class _DualEncoder(nn.Module):
    """Logit scale / bias and the encode/forward contract; subclasses provide the raw
    (unnormalised) `_image_features` and `_text_features`."""

    def __init__(self, embed_dim: int, loss: str):
        super().__init__()
        if loss not in LOSS_KINDS:
            raise ValueError(f"loss {loss!r} is not one of {', '.join(LOSS_KINDS)}")
        self.embed_dim = embed_dim
        self.loss_kind = loss
        init_scale = SIGLIP_INIT_LOGIT_SCALE if loss == "siglip" else CLIP_INIT_LOGIT_SCALE
        self.logit_scale = nn.Parameter(torch.tensor(init_scale))
        if loss == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(SIGLIP_INIT_LOGIT_BIAS))
        else:
            self.register_parameter("logit_bias", None)

    def _image_features(self, pixel_values: Tensor) -> Tensor:
        raise NotImplementedError

    def _text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError

    def encode_image(self, pixel_values: Tensor) -> Tensor:
        """`[B, 3, H, W]` normalised images -> L2-normalised `[B, embed_dim]`."""
        return F.normalize(self._image_features(pixel_values), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """`[B, L]` token ids and mask (1 = real token) -> L2-normalised `[B, embed_dim]`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return F.normalize(self._text_features(input_ids, attention_mask), dim=-1)

    def logit_multiplier(self) -> Tensor:
        """exp of the learnable log scale clamped to [0, ln 100]."""
        return self.logit_scale.clamp(0, LOG_MAX_LOGIT_SCALE).exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the log scale parameter in place to [0, ln 100]; call after optimizer steps
        so the stored value never drifts out of the range where it has a gradient."""
        self.logit_scale.clamp_(0, LOG_MAX_LOGIT_SCALE)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict:
        return {
            "image_embeds": self.encode_image(pixel_values),
            "text_embeds": self.encode_text(input_ids, attention_mask),
            "logit_scale": self.logit_multiplier(),
            "logit_bias": self.logit_bias,
        }


# ---- the seed's baseline ---------------------------------------------------------------------
class SimpleMedCLIPModel(_DualEncoder):
    """The seed script's SimpleMedCLIPModel: four conv-BN-ReLU-maxpool blocks
    (3 -> 32 -> 64 -> 128 -> 256), global average pooling and Linear(256 -> embed_dim) for
    images; for text, 50 ASCII codes scaled to [0, 1] through one Linear(50 -> embed_dim)."""

    TEXT_LENGTH = 50
    CHANNELS = (3, 32, 64, 128, 256)

    def __init__(self, embed_dim: int = 512, loss: str = "clip"):
        super().__init__(embed_dim, loss)
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(self.CHANNELS[:-1], self.CHANNELS[1:]):
            # No conv bias: the BatchNorm right after it has its own.
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.vision = nn.Sequential(
            *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(self.CHANNELS[-1], embed_dim)
        )
        self.text_projection = nn.Linear(self.TEXT_LENGTH, embed_dim)

    def _image_features(self, pixel_values: Tensor) -> Tensor:
        return self.vision(pixel_values)

    def _text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.shape[-1] != self.TEXT_LENGTH:
            raise ValueError(
                f"SimpleMedCLIPModel reads {self.TEXT_LENGTH} characters per text, got input_ids of length "
                f"{input_ids.shape[-1]} (use the character-level tokenizer with max_length {self.TEXT_LENGTH})"
            )
        codes = (input_ids * attention_mask).to(self.text_projection.weight.dtype) / 255.0
        return self.text_projection(codes)


# ---- image backbones -------------------------------------------------------------------------
def pretrained_weights_file(name: str) -> Path:
    """Where torchvision keeps the DEFAULT ImageNet weights of backbone `name`:
    torch.hub.get_dir()/checkpoints/<file name of the weights URL>."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


class SmallCNN(nn.Module):
    """`vision_backbone: small_cnn`, the CPU default: four stages, each a 3x3 conv of stride 2
    and a 3x3 conv of stride 1, both conv-BN-ReLU, widths 32 -> 64 -> 128 -> 256, then global
    average pooling: `[B, 3, H, W]` -> `[B, 256]` (H, W divisible by 16 keep every stage whole).

    1.17 M parameters (ResNet-18: 11.2 M) and 53 M multiply-adds per image at 64 px (ResNet-18 at
    96 px: 333 M), so a 2-core CPU run can show it several times more pairs in the same minutes.
    """

    CHANNELS = (32, 64, 128, 256)

    def __init__(self, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in zip((in_channels, *self.CHANNELS[:-1]), self.CHANNELS):
            layers += _conv_bn_relu(c_in, c_out, stride=2) + _conv_bn_relu(c_out, c_out, stride=1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.width = self.CHANNELS[-1]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.pool(self.features(pixel_values))


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own.
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


# Backbones of this module rather than torchvision's: no ImageNet weights exist for them.
OWN_BACKBONES = {"small_cnn": SmallCNN}


def build_vision_backbone(name: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """A torchvision classifier with its head replaced by Identity, and its feature width; or
    one of `OWN_BACKBONES` (`small_cnn`), which end in their pooled features already.

    `pretrained` loads the ImageNet weights from the local torch hub cache only; a missing file
    is a UserError naming it (never a download).
    """
    if name not in VISION_BACKBONES:
        raise ConfigError(f"config key 'vision_backbone': {name!r} is not one of {', '.join(VISION_BACKBONES)}")
    if name in OWN_BACKBONES:
        if pretrained:
            raise ConfigError(f"config key 'vision_pretrained': {name!r} has no pretrained weights; set it to false")
        own = OWN_BACKBONES[name]()
        return own, own.width
    backbone = torchvision.models.get_model(name, weights=None)
    if pretrained:
        backbone.load_state_dict(_load_local_weights(name))
    if name.startswith("resnet"):
        width = backbone.fc.in_features
        backbone.fc = nn.Identity()
    elif name == "swin_t":
        width = backbone.head.in_features
        backbone.head = nn.Identity()
    else:  # mobilenet_v3_small: the whole 576 -> 1024 -> 1000 classifier goes
        width = backbone.classifier[0].in_features
        backbone.classifier = nn.Identity()
    return backbone, width


def _load_local_weights(name: str) -> dict:
    path = pretrained_weights_file(name)
    if not path.is_file():
        raise CheckpointError(
            f"vision_pretrained: {path} not found (no download here); on a networked machine run "
            f"`python -c \"import torchvision; torchvision.models.{name}(weights='DEFAULT')\"` and copy "
            f"the file from its torch hub checkpoints folder, or set vision_pretrained: false"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, wrong file, ...
        raise CheckpointError(f"vision_pretrained: {path} cannot be read ({type(e).__name__}); copy it again") from None


# ---- text encoders ---------------------------------------------------------------------------
def _masked_mean(tokens: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over the real tokens: `[B, L, W]`, `[B, L]` -> `[B, W]`."""
    weights = attention_mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings, a pre-norm GELU transformer encoder, a final
    LayerNorm, mean pooling over the real (non-pad) tokens and Linear(width -> embed_dim, no bias).

    Mean pooling rather than the [CLS] or [SEP] token the subword tokenizer adds (they are pooled
    with the words, as real tokens): a report's findings are spread over all of its words, the mean
    ignores padding so an embedding does not depend on the padded length, and MedCLIP pools its
    BERT by token means too.
    """

    def __init__(
        self,
        vocab_size: int,
        width: int = 256,
        layers: int = 4,
        heads: int = 4,
        max_length: int = 128,
        pad_id: int = 0,
        embed_dim: int = 512,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.max_length = max_length
        self.pad_id = pad_id
        self.token_embedding = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.position_embedding = nn.Parameter(torch.empty(max_length, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        # Nested tensors are not used with norm_first; say so rather than let torch warn.
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.projection = nn.Linear(width, embed_dim, bias=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)
        nn.init.normal_(self.projection.weight, std=width**-0.5)
        with torch.no_grad():
            self.token_embedding.weight[pad_id].zero_()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        length = input_ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"input_ids have {length} tokens, the text encoder was built for {self.max_length}")
        x = self.token_embedding(input_ids) + self.position_embedding[:length]
        padding = attention_mask == 0
        # A text with no token at all would mask every key (NaN attention); let it attend to its
        # first (pad) position instead. Pooling still sees no real token and returns zeros.
        padding[:, 0] &= ~padding.all(dim=1)
        x = self.transformer(x, src_key_padding_mask=padding)
        return self.projection(_masked_mean(self.final_norm(x), attention_mask))


class BertTextEncoder(nn.Module):
    """A BERT-family model from a LOCAL Hugging Face folder (`local_files_only=True`) and
    Linear(hidden -> embed_dim, no bias), as MedCLIP does with Bio_ClinicalBERT.

    Pooling: the average of the last four transformer layers' hidden states (fewer if the model
    has fewer), then the mean over the real tokens. MedCLIP averages layers 1, 2 and the last and
    includes padding in its token mean; the last four layers are the usual BERT feature choice
    and the masked mean makes the embedding independent of the padded length.
    """

    LAYERS_AVERAGED = 4

    def __init__(self, path: str | os.PathLike, embed_dim: int = 512):
        super().__init__()
        transformers = import_transformers()
        folder = local_hf_folder(path)
        self.model = from_local_folder(transformers.AutoModel, folder, "a Hugging Face model")
        self.embed_dim = embed_dim
        self.path = str(folder)
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self.projection = nn.Linear(self.model.config.hidden_size, embed_dim, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = output.hidden_states[1:][-self.LAYERS_AVERAGED:]  # [0] is the embedding layer
        tokens = torch.stack(layers).mean(dim=0)
        return self.projection(_masked_mean(tokens, attention_mask))


class PrecomputedTextEncoder(nn.Module):
    """Text features computed elsewhere (the seed's clip_text_features.json: a list of feature
    rows, or {"features": [[...], ...]}), kept frozen, and a trainable Linear(D -> embed_dim,
    no bias). A sample's text is the mean of the rows its `clip_indices` pick.

    `forward(input_ids, attention_mask)`: `input_ids` holds the clip indices `[B, K]`, padded
    with -1 (mask 0). The feature rows are a non-persistent buffer: checkpoints stay small and
    the file (config key text_features_path) is read again when the model is built.
    """

    def __init__(self, features_path: str | os.PathLike, embed_dim: int = 512):
        super().__init__()
        self.path = Path(features_path)
        features = self._read(self.path)
        self.register_buffer("features", torch.from_numpy(features), persistent=False)
        self.embed_dim = embed_dim
        self.projection = nn.Linear(features.shape[1], embed_dim, bias=False)

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        # A file a model names (config key text_features_path): a regular file under the limit,
        # never a FIFO or /dev/zero (files.read_limited).
        text = read_text_limited(path, MAX_FEATURES_BYTES, what="text_features_path", error=DataError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"text_features_path {path}: not valid JSON (line {e.lineno})") from None
        except (ValueError, RecursionError) as e:
            raise DataError(f"text_features_path {path}: not usable JSON ({type(e).__name__})") from None
        if isinstance(data, dict):
            if "features" not in data:
                raise DataError(f"text_features_path {path}: a JSON object must have a 'features' key")
            data = data["features"]
        if not isinstance(data, list) or not data or not all(isinstance(row, list) and row for row in data):
            raise DataError(f"text_features_path {path}: expected a non-empty list of non-empty feature lists")
        if len({len(row) for row in data}) != 1:
            raise DataError(f"text_features_path {path}: feature rows have different lengths")
        try:
            features = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise DataError(f"text_features_path {path}: feature values must be numbers") from None
        if not np.isfinite(features).all():
            raise DataError(f"text_features_path {path}: feature values must be finite (found NaN or inf)")
        return features

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The features are not in checkpoints: a file swapped for one with another feature width
        # would otherwise surface as a bare size-mismatch error on 'projection.weight'.
        weight = state_dict.get(prefix + "projection.weight")
        width = self.features.shape[1]
        if weight is not None and weight.ndim == 2 and weight.shape[1] != width:
            raise DataError(
                f"text_features_path {self.path}: feature rows have {width} values, the checkpoint's "
                f"text projection was trained on {weight.shape[1]}"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        count = self.features.shape[0]
        if bool((input_ids >= count).any()):
            bad = int(input_ids[input_ids >= count][0])
            raise DataError(f"clip index {bad} is out of range: {self.path} has {count} feature rows")
        valid = (input_ids >= 0) & (attention_mask > 0)
        if not bool(valid.any(dim=1).all()):
            raise DataError("a sample has no clip_indices (precomputed text features need at least one index)")
        rows = self.features[input_ids.clamp_min(0)]  # pads read row 0 and get weight 0 below
        return self.projection(_masked_mean(rows, valid))


# ---- the MedCLIP-style model -----------------------------------------------------------------
class MedCLIPModel(_DualEncoder):
    """A torchvision image backbone (head replaced by Identity) with Linear(features ->
    embed_dim, no bias) as in MedCLIP, and a text encoder module that maps
    (input_ids, attention_mask) to `[B, embed_dim]` (one of the encoders above)."""

    def __init__(
        self,
        text_encoder: nn.Module,
        vision_backbone: str = "resnet18",
        embed_dim: int = 512,
        vision_pretrained: bool = False,
        loss: str = "clip",
    ):
        super().__init__(embed_dim, loss)
        if getattr(text_encoder, "embed_dim", embed_dim) != embed_dim:
            raise ValueError(f"text encoder outputs {text_encoder.embed_dim} features, the model embeds to {embed_dim}")
        self.vision_backbone_name = vision_backbone
        self.vision, vision_width = build_vision_backbone(vision_backbone, vision_pretrained)
        self.vision_projection = nn.Linear(vision_width, embed_dim, bias=False)
        self.text_encoder = text_encoder

    def _image_features(self, pixel_values: Tensor) -> Tensor:
        return self.vision_projection(self.vision(pixel_values))

    def _text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.text_encoder(input_ids, attention_mask)


# ---- factory ---------------------------------------------------------------------------------
def siglip_initial_bias(cfg) -> float:
    """SigLIP's bias starts at the log-odds that a pair in the batch is positive (1 of B).

    The paper's -10 is that prior for its ~32k batches. At batch 32 it makes every negative's
    gradient ~e^-10, so early steps only pull positives together, and the bias itself hardly
    moves (-10.000 to -9.998 in 100 steps at lr 1e-3 on the phantom; docs/models.md).
    """
    if cfg.siglip_bias_init == "paper":
        return SIGLIP_INIT_LOGIT_BIAS
    pairs = cfg.batch_size * int(os.environ.get("WORLD_SIZE", "1"))  # the loss sees every rank's pairs
    return -math.log(max(pairs - 1, 1))


def build_model(cfg, tokenizer=None) -> nn.Module:
    """The model the config asks for: cfg.model ('simple' | 'medclip'), cfg.vision_backbone,
    cfg.vision_pretrained, cfg.text_encoder ('transformer' | 'bert' | 'precomputed'),
    cfg.embed_dim and cfg.loss (which sets the logit scale init and the SigLIP bias, whose
    start `siglip_initial_bias` chooses).

    `tokenizer` (one of tokenizers.py) gives vocab_size, pad_id and
    max_length to the transformer encoder; the precomputed encoder needs none.
    """
    model = _build_model(cfg, tokenizer)
    if model.logit_bias is not None:
        with torch.no_grad():
            model.logit_bias.fill_(siglip_initial_bias(cfg))
    return model


def _build_model(cfg, tokenizer=None) -> nn.Module:
    if cfg.model == "simple":
        length = getattr(tokenizer, "max_length", SimpleMedCLIPModel.TEXT_LENGTH)
        if length != SimpleMedCLIPModel.TEXT_LENGTH:
            raise ConfigError(
                f"config key 'model': 'simple' reads {SimpleMedCLIPModel.TEXT_LENGTH} characters, "
                f"the tokenizer gives {length} tokens"
            )
        return SimpleMedCLIPModel(embed_dim=cfg.embed_dim, loss=cfg.loss)

    if cfg.text_encoder == "transformer":
        if tokenizer is None:
            raise ValueError("build_model: text_encoder 'transformer' needs the tokenizer (vocab size, pad id)")
        text_encoder: nn.Module = TransformerTextEncoder(
            vocab_size=tokenizer.vocab_size, width=cfg.text_width, layers=cfg.text_layers, heads=cfg.text_heads,
            max_length=tokenizer.max_length, pad_id=tokenizer.pad_id, embed_dim=cfg.embed_dim,
        )
    elif cfg.text_encoder == "bert":
        text_encoder = BertTextEncoder(cfg.path("bert_path"), embed_dim=cfg.embed_dim)
        length = getattr(tokenizer, "max_length", None)
        if length is not None and text_encoder.max_positions is not None and length > text_encoder.max_positions:
            raise ConfigError(
                f"config key 'max_text_tokens': {length} is more than the {text_encoder.max_positions} "
                f"positions of the BERT model in {cfg.bert_path}"
            )
    else:
        text_encoder = PrecomputedTextEncoder(cfg.path("text_features_path"), embed_dim=cfg.embed_dim)
    return MedCLIPModel(
        text_encoder, vision_backbone=cfg.vision_backbone, embed_dim=cfg.embed_dim,
        vision_pretrained=cfg.vision_pretrained, loss=cfg.loss,
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values (each shared parameter counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
