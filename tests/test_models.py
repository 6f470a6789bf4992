"""Model behaviour: shapes, padding invariance, equivalent attention orders, gradients, parameter count."""

from dataclasses import replace

import pytest
import torch

from qin.config import ModelConfig
from qin.models import Batch, FeatureSpec, build_model

SPEC = FeatureSpec(n_items=60, n_tags=25)


def _model(**overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = replace(ModelConfig(embedding_dim=8, num_layers=2, num_row=3), **overrides)
    tags = torch.randint(0, SPEC.n_tags, (SPEC.n_items, 5))
    tags[0] = 0
    emb = torch.randn(SPEC.n_items, 128)
    emb[0] = 0
    model = build_model(cfg, SPEC, tags, emb)
    # Default init puts embeddings at N(0, 1e-4): make them large enough that a wrong mask would show.
    with torch.no_grad():
        for table in model.embedding_tables():
            table.normal_(std=0.5)
    return model


def _batch(b: int = 6, length: int = 12, pad: int = 4) -> Batch:
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(1, SPEC.n_items, (b, length), generator=g)
    seq[:, :pad] = 0  # left padding, most recent last
    return Batch(
        item_seq=seq,
        likes_level=torch.randint(0, 11, (b,), generator=g),
        views_level=torch.randint(0, 11, (b,), generator=g),
        item_id=torch.randint(1, SPEC.n_items, (b,), generator=g),
        label=torch.randint(0, 2, (b,), generator=g).float(),
    )


def test_output_is_one_logit_per_row() -> None:
    model = _model().eval()
    assert model(_batch(b=5)).shape == (5,)
    assert model(_batch(b=1, length=3, pad=0)).shape == (1,)


@pytest.mark.parametrize("order", ["fused", "reference"])
def test_padding_positions_do_not_change_the_output(order: str) -> None:
    model = _model(attention_order=order).eval()
    batch = _batch()
    base = model(batch)
    # More left padding (a longer history with the same items) changes nothing...
    longer = Batch(**{**batch.__dict__, "item_seq": torch.nn.functional.pad(batch.item_seq, (7, 0))})
    torch.testing.assert_close(model(longer), base)
    # ...and neither does whatever the padding row of the id table holds.
    with torch.no_grad():
        model.items.id_emb.weight[0].normal_(std=3.0)
    torch.testing.assert_close(model(batch), base)
    # The check can fail: changing a real history item does change the output.
    changed = batch.item_seq.clone()
    changed[:, -1] = (changed[:, -1] % (SPEC.n_items - 1)) + 1
    assert not torch.allclose(model(Batch(**{**batch.__dict__, "item_seq": changed})), base)


def test_fused_and_reference_attention_orders_agree() -> None:
    model = _model(attention_order="reference").eval()
    batch = _batch(b=32, length=20, pad=5)
    ref = model(batch)
    model.attention.order = "fused"
    torch.testing.assert_close(model(batch), ref, rtol=1e-4, atol=1e-4)


def test_every_parameter_receives_a_gradient() -> None:
    model = _model().train()
    batch = _batch(b=16)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_paper_preset_has_the_authors_parameter_count() -> None:
    cfg = ModelConfig(embedding_dim=128, num_layers=4, num_row=4)
    spec = FeatureSpec(n_items=91_718, n_tags=11_740)
    model = build_model(cfg, spec, torch.zeros(91_718, 5, dtype=torch.long), torch.zeros(91_718, 128))
    assert sum(p.numel() for p in model.parameters()) == 31_244_293


def test_unknown_model_name_is_refused() -> None:
    cfg = ModelConfig()
    object.__setattr__(cfg, "name", "dcnv9")
    with pytest.raises(ValueError, match=r"'train\.model\.name': expected one of"):
        build_model(cfg, SPEC, torch.zeros(60, 5, dtype=torch.long), torch.zeros(60, 128))
