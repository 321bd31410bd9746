"""Model shapes, normalisation, logit scale, backbones, text encoders, local-only weights."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from medclip_nb.config import Config
from medclip_nb.errors import CheckpointError, ConfigError, DataError, UserError
from medclip_nb.model.encoders import (
    OWN_BACKBONES,
    VISION_BACKBONES,
    BertTextEncoder,
    MedCLIPModel,
    PrecomputedTextEncoder,
    SimpleMedCLIPModel,
    SmallCNN,
    TransformerTextEncoder,
    build_model,
    build_vision_backbone,
    count_parameters,
    pretrained_weights_file,
    siglip_initial_bias,
)
from medclip_nb.model.losses import LOG_MAX_LOGIT_SCALE
from medclip_nb.text.tokenizers import HFTokenizerAdapter, tokenizer_from_json

TOKENIZER = SimpleNamespace(vocab_size=50, pad_id=0, max_length=16)
SMALL_TEXT = {"text_width": 32, "text_layers": 1, "text_heads": 2, "embed_dim": 24}


def small_text_encoder(embed_dim=24):
    return TransformerTextEncoder(vocab_size=50, width=32, layers=1, heads=2, max_length=16, pad_id=0,
                                  embed_dim=embed_dim)


def text_batch(batch=2, length=16):
    ids = torch.randint(1, 50, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    ids[0, 5:], mask[0, 5:] = 0, 0
    return ids, mask


def assert_unit_rows(x, rows, dim):
    assert x.shape == (rows, dim)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(rows))


# ---- simple model -----------------------------------------------------------------------------
def test_simple_model_outputs_and_parameter_count():
    model = SimpleMedCLIPModel(embed_dim=512)
    ids = torch.randint(32, 127, (2, 50))
    out = model(torch.randn(2, 3, 64, 64), ids, torch.ones_like(ids))
    assert_unit_rows(out["image_embeds"], 2, 512)
    assert_unit_rows(out["text_embeds"], 2, 512)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out["logit_bias"] is None

    convs = 3 * 32 * 9 + 32 * 64 * 9 + 64 * 128 * 9 + 128 * 256 * 9  # 3x3, no bias (BatchNorm follows)
    batch_norms = 2 * (32 + 64 + 128 + 256)
    image_head = 256 * 512 + 512
    text_projection = 50 * 512 + 512
    assert count_parameters(model) == convs + batch_norms + image_head + text_projection + 1


def test_simple_model_text_is_ascii_codes_over_255_through_one_linear():
    model = SimpleMedCLIPModel(embed_dim=8)
    ids = torch.tensor([[ord(c) for c in "heart size normal".ljust(50, "\0")]])
    mask = (ids > 0).long()
    expected = nn.functional.normalize(model.text_projection(ids.float() / 255), dim=-1)
    torch.testing.assert_close(model.encode_text(ids, mask), expected)
    with pytest.raises(ValueError, match="50 characters"):
        model.encode_text(torch.zeros(1, 77, dtype=torch.long), torch.ones(1, 77, dtype=torch.long))


# ---- logit scale -------------------------------------------------------------------------------
def test_logit_scale_clamped_in_forward_and_in_place():
    model = SimpleMedCLIPModel(embed_dim=8)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.logit_multiplier().item() == pytest.approx(100.0, rel=1e-5)
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == pytest.approx(LOG_MAX_LOGIT_SCALE)
    with torch.no_grad():
        model.logit_scale.fill_(-2.0)
    assert model.logit_multiplier().item() == 1.0
    model.clamp_logit_scale_()
    assert model.logit_scale.item() == 0.0


def test_siglip_model_has_bias_and_scale_init():
    model = MedCLIPModel(small_text_encoder(), "mobilenet_v3_small", embed_dim=24, loss="siglip")
    assert model.logit_multiplier().item() == pytest.approx(10.0, rel=1e-5)
    assert model.logit_bias.item() == -10.0
    assert model.logit_bias in set(model.parameters())


@pytest.mark.parametrize("init, world, expected",
                         [("batch_prior", "1", -math.log(31)), ("batch_prior", "4", -math.log(127)),
                                                    ("paper", "1", -10.0)])
def test_build_model_starts_the_siglip_bias_at_the_batch_prior(monkeypatch, init, world, expected):
    """The bias starts at the log-odds of a positive pair among all pairs the loss sees; the
    paper's -10 (that prior at ~32k pairs) stays selectable."""
    monkeypatch.setenv("WORLD_SIZE", world)
    cfg = Config(model="simple", loss="siglip", batch_size=32, siglip_bias_init=init, embed_dim=16)
    assert siglip_initial_bias(cfg) == pytest.approx(expected)
    assert build_model(cfg).logit_bias.item() == pytest.approx(expected, abs=1e-6)
    assert build_model(cfg.replace(loss="clip")).logit_bias is None


# ---- vision backbones --------------------------------------------------------------------------
@pytest.mark.parametrize("name", VISION_BACKBONES)
def test_each_backbone_builds_and_embeds_a_64px_batch(name):
    torch.manual_seed(0)
    model = MedCLIPModel(small_text_encoder(), name, embed_dim=24).eval()
    ids, mask = text_batch()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), ids, mask)
    assert_unit_rows(out["image_embeds"], 2, 24)
    assert_unit_rows(out["text_embeds"], 2, 24)
    assert model.vision_projection.bias is None
    if name in OWN_BACKBONES:
        assert model.vision_projection.in_features == OWN_BACKBONES[name]().width
        return
    # The classifier head is gone: the projection reads the backbone's pooled features.
    reference_head = torchvision.models.get_model(name, weights=None)
    heads = {"swin_t": "head", "mobilenet_v3_small": "classifier"}
    head = getattr(reference_head, heads.get(name, "fc"))
    first_linear = head if isinstance(head, nn.Linear) else head[0]
    assert model.vision_projection.in_features == first_linear.in_features


@pytest.mark.parametrize("side", [64, 48, 50])
def test_small_cnn_pools_256_features_at_any_side(side):
    backbone, width = build_vision_backbone("small_cnn")
    assert isinstance(backbone, SmallCNN) and width == 256
    strides = [m.stride[0] for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [2, 1] * 4  # four stages: 1/16 of the input side before the pool
    with torch.no_grad():
        assert backbone.eval()(torch.randn(3, 3, side, side)).shape == (3, 256)
    convs = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9 \
        + 128 * 256 * 9 + 256 * 256 * 9  # 3x3, no bias (BatchNorm follows)
    assert count_parameters(backbone) == convs + 2 * 2 * (32 + 64 + 128 + 256)


def test_small_cnn_model_trains_a_step_and_lowers_the_loss():
    torch.manual_seed(0)
    cfg = Config(model="medclip", vision_backbone="small_cnn", loss="clip", **SMALL_TEXT)
    model = build_model(cfg, TOKENIZER).train()
    images = torch.randn(8, 3, 32, 32)
    ids = torch.randint(1, 50, (8, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {name: p.detach().clone() for name, p in model.vision.named_parameters()}

    def loss_now():
        out = model(images, ids, mask)
        logits = out["logit_scale"] * out["image_embeds"] @ out["text_embeds"].T
        target = torch.arange(8)
        return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2

    losses = []
    for _ in range(5):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    changed = [name for name, p in model.vision.named_parameters() if not torch.equal(p, before[name])]
    assert changed == list(before)  # every conv and BatchNorm parameter got a gradient step


def test_small_cnn_has_no_pretrained_weights():
    with pytest.raises(ConfigError, match="vision_pretrained"):
        build_vision_backbone("small_cnn", pretrained=True)
    assert "small_cnn" in VISION_BACKBONES and Config(vision_backbone="small_cnn").vision_backbone == "small_cnn"


def test_pretrained_weights_missing_is_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = pretrained_weights_file("resnet18")
    assert expected.parent == tmp_path / "hub" / "checkpoints"
    assert expected.name == torchvision.models.ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[1]
    with pytest.raises(UserError) as info:
        build_vision_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    assert str(expected) in message
    assert "torchvision.models.resnet18(weights='DEFAULT')" in message
    assert not expected.exists()  # nothing was downloaded


def test_pretrained_weights_load_from_local_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(3)
    source = torchvision.models.mobilenet_v3_small(weights=None)
    path = pretrained_weights_file("mobilenet_v3_small")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    backbone, _ = build_vision_backbone("mobilenet_v3_small", pretrained=True)
    torch.testing.assert_close(backbone.features[0][0].weight, source.features[0][0].weight)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        build_vision_backbone("mobilenet_v3_small", pretrained=True)


# ---- transformer text encoder ------------------------------------------------------------------
def test_transformer_text_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = small_text_encoder().eval()
    tokens = torch.tensor([[7, 3, 9, 4]])
    short = torch.cat([tokens, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    long = torch.cat([tokens, torch.full((1, 12), 5)], dim=1)  # pads hold junk ids: masked anyway
    short_mask = (torch.arange(8) < 4).long().unsqueeze(0)
    long_mask = (torch.arange(16) < 4).long().unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(encoder(short, short_mask), encoder(long, long_mask), rtol=1e-5, atol=1e-5)
        empty = encoder(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    assert torch.isfinite(empty).all()
    with pytest.raises(ValueError, match="built for 16"):
        encoder(torch.ones(1, 17, dtype=torch.long), torch.ones(1, 17, dtype=torch.long))


# ---- build_model -------------------------------------------------------------------------------
def test_build_model_dispatches_on_config():
    simple = build_model(Config(model="simple", embed_dim=32), SimpleNamespace(max_length=50))
    assert isinstance(simple, SimpleMedCLIPModel) and simple.embed_dim == 32
    with pytest.raises(ConfigError, match="'model'"):
        build_model(Config(model="simple"), TOKENIZER)

    model = build_model(Config(vision_backbone="resnet18", loss="siglip", **SMALL_TEXT), TOKENIZER)
    assert isinstance(model, MedCLIPModel) and isinstance(model.text_encoder, TransformerTextEncoder)
    assert model.text_encoder.token_embedding.num_embeddings == TOKENIZER.vocab_size
    assert model.logit_bias is not None
    ids, mask = text_batch()
    out = model(torch.randn(2, 3, 64, 64), ids, mask)
    assert_unit_rows(out["text_embeds"], 2, 24)


# ---- precomputed text features -----------------------------------------------------------------
def test_precomputed_encoder_means_the_picked_rows(tmp_path):
    rows = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 4.0]]
    for layout in (rows, {"features": rows}):
        path = tmp_path / "clip_text_features.json"
        path.write_text(json.dumps(layout))
        encoder = PrecomputedTextEncoder(path, embed_dim=3)
        with torch.no_grad():
            encoder.projection.weight.copy_(torch.eye(3))
        ids = torch.tensor([[0, 2, -1], [1, -1, -1]])
        out = encoder(ids, (ids >= 0).long())
        torch.testing.assert_close(out, torch.tensor([[0.5, 0.0, 2.0], [0.0, 2.0, 0.0]]))
        assert not encoder.features.requires_grad and "features" not in encoder.state_dict()

    with pytest.raises(DataError, match="clip index 3 is out of range"):
        encoder(torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.long))


@pytest.mark.parametrize(
    "content, problem",
    [("{not json", "not valid JSON"), ('{"rows": [[1]]}', "'features' key"), ("[[1, 2], [3]]", "different lengths"),
     ('[[1, "a"]]', "must be numbers"), ("[]", "non-empty"), ("[[1, NaN]]", "finite")],
)
def test_precomputed_encoder_refuses_malformed_files(tmp_path, content, problem):
    path = tmp_path / "features.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        PrecomputedTextEncoder(path)
    assert str(path) in str(info.value)


def test_build_model_precomputed(tmp_path):
    path = tmp_path / "clip_text_features.json"
    path.write_text(json.dumps([[0.1] * 6, [0.2] * 6]))
    cfg = Config(vision_backbone="mobilenet_v3_small", text_encoder="precomputed", text_features_path=str(path),
                 embed_dim=16)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), torch.tensor([[0, -1], [1, 0]]), torch.tensor([[1, 0], [1, 1]]))
    assert_unit_rows(out["text_embeds"], 2, 16)


# ---- BERT from a local folder ------------------------------------------------------------------
def test_bert_without_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(UserError, match=r"pip install -e \.\[transformers\]"):
        BertTextEncoder(tmp_path)


@pytest.fixture
def tiny_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    words = "heart size normal small left right pleural effusion edema no acute lung".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"word{i}" for i in range(100 - 5 - len(words)))]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # Read the vocab.txt back as a tokenizer folder (works with transformers 4 and 5) and save it whole.
    transformers.BertTokenizerFast.from_pretrained(tmp_path).save_pretrained(tmp_path)
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path)
    return tmp_path


def test_local_bert_encoder_and_tokenizer(tiny_bert):
    tokenizer = HFTokenizerAdapter(tiny_bert, max_length=16)
    batch = tokenizer.encode(["heart size normal", "small left pleural effusion"])
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"].dtype == torch.int64
    assert tokenizer.pad_id == 0 and tokenizer.vocab_size == 100
    assert batch["input_ids"][0, :5].tolist() == [2, 5, 6, 7, 3]  # [CLS] heart size normal [SEP]
    assert batch["attention_mask"][0].sum() == 5
    assert json.loads(tokenizer.to_json())["kind"] == "hf"
    assert tokenizer_from_json(tokenizer.to_json()).max_length == 16

    encoder = BertTextEncoder(tiny_bert, embed_dim=24).eval()
    with torch.no_grad():
        out = encoder(batch["input_ids"], batch["attention_mask"])
        # Masked mean: more padding does not change the embedding.
        longer = HFTokenizerAdapter(tiny_bert,
                                    max_length=24).encode(["heart size normal", "small left pleural effusion"])
        torch.testing.assert_close(out, encoder(longer["input_ids"], longer["attention_mask"]), rtol=1e-4, atol=1e-5)
    assert out.shape == (2, 24)

    model = build_model(Config(text_encoder="bert", bert_path=str(tiny_bert), vision_backbone="resnet18",
                               embed_dim=24), tokenizer)
    with torch.no_grad():
        embeds = model.eval()(torch.randn(2, 3, 64, 64), batch["input_ids"], batch["attention_mask"])
    assert_unit_rows(embeds["text_embeds"], 2, 24)

    with pytest.raises(ConfigError, match="max_text_tokens"):
        build_model(Config(text_encoder="bert", bert_path=str(tiny_bert)), SimpleNamespace(max_length=65))


def test_bert_path_must_be_a_local_folder(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(UserError, match="not a folder"):
        BertTextEncoder(tmp_path / "missing")
