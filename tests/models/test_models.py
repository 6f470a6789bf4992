"""Model behaviour: shapes, padding invariance, equivalent attention orders, gradients, learning, the
paper's parameter count, and that each ablation switch replaces the module it names."""

import pytest
import torch
from torch import nn

from qin.data.features import default_spec
from qin.models import build_model
from qin.models.blocks import MLP, Batch, MeanPooling, embedding_tables
from qin.models.dcnv3 import DCNv3Config
from qin.models.din import DINConfig
from qin.models.qin import QINConfig, QuadraticLayer, TargetAttention
from qin.models.settings import ModelConfig
from qin.settings.params import preset
from qin.training.losses import bce, model_loss, tri_bce

SPEC = default_spec(n_items=60, n_tags=25)
N_TAGS = 25

CONFIGS: dict[str, ModelConfig] = {
    "qin": QINConfig(embedding_dim=8, num_layers=2, num_row=3),
    "qin-reference-order": QINConfig(embedding_dim=8, attention_order="reference"),
    "qin w/o QNN": QINConfig(embedding_dim=8, use_qnn=False, mlp_units=(32, 16)),
    "qin w/o ASTA": QINConfig(embedding_dim=8, history_pooling="mean"),
    "qin ASTA w/ SoftMax": QINConfig(embedding_dim=8, attention_activation="softmax"),
    "qin QNN w/o PReLU": QINConfig(embedding_dim=8, qnn_activation="relu"),
    "qin ASTA w/ Dropout": QINConfig(embedding_dim=8, attention_dropout=0.1),
    "din": DINConfig(embedding_dim=8, attention_units=(16, 8), dnn_units=(32, 16)),
    "dcnv3": DCNv3Config(embedding_dim=8),
    "sdcnv3": DCNv3Config(name="sdcnv3", embedding_dim=8),
}


def _model(cfg: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    tags = torch.randint(0, N_TAGS, (SPEC.n_items, 5))
    tags[0] = 0
    emb = torch.randn(SPEC.n_items, 128)
    emb[0] = 0
    model = build_model(cfg, SPEC, {"item_tags": tags, "item_emb_d128": emb})
    # Default init puts embeddings at N(0, 1e-4): make them large enough that a wrong mask would show.
    with torch.no_grad():
        for table in embedding_tables(model):
            table.normal_(std=0.5)
    return model


def _batch(b: int = 6, length: int = 12, pad: int = 4, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, SPEC.n_items, (b, length), generator=g)
    seq[:, :pad] = 0  # left padding, most recent last
    return Batch(
        item_seq=seq,
        likes_level=torch.randint(0, 11, (b,), generator=g),
        views_level=torch.randint(0, 11, (b,), generator=g),
        item_id=torch.randint(1, SPEC.n_items, (b,), generator=g),
        label=torch.randint(0, 2, (b,), generator=g).float(),
    )


def _with_seq(batch: Batch, seq: torch.Tensor) -> Batch:
    return Batch(batch.label, **{**batch.columns, "item_seq": seq})


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_is_one_logit_per_row(name: str) -> None:
    model = _model(CONFIGS[name]).eval()
    assert model(_batch(b=5)).shape == (5,)
    assert model(_batch(b=1, length=3, pad=0)).shape == (1,)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_positions_do_not_change_the_output(name: str) -> None:
    model = _model(CONFIGS[name]).eval()
    batch = _batch()
    base = model(batch)
    # More left padding (a longer history with the same items) changes nothing...
    torch.testing.assert_close(model(_with_seq(batch, nn.functional.pad(batch.item_seq, (7, 0)))), base)
    # ...and neither does whatever the padding row of the id table holds.
    with torch.no_grad():
        model.features.items.embed.item_id.weight[0].normal_(std=3.0)
    torch.testing.assert_close(model(batch), base)
    # The check can fail: changing a real history item does change the output.
    changed = batch.item_seq.clone()
    changed[:, -1] = (changed[:, -1] % (SPEC.n_items - 1)) + 1
    assert not torch.allclose(model(_with_seq(batch, changed)), base)


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_fused_and_reference_attention_orders_agree(activation: str) -> None:
    model = _model(QINConfig(embedding_dim=8, attention_order="reference", attention_activation=activation))
    model.eval()
    batch = _batch(b=32, length=20, pad=5)
    ref = model(batch)
    model.attention.order = "fused"
    torch.testing.assert_close(model(batch), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["qin", "din", "sdcnv3"])
def test_encoding_each_distinct_item_once_is_the_same_function_as_encoding_every_position(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(CONFIGS[name]).train()
    batch = _batch(b=32, length=20, pad=5)
    batch.item_seq[:, -3:] = batch.item_seq[:, -4:-3]  # repeats within a history (60 ids: across rows too)
    batch.item_seq[:, -5] = batch.item_id  # and the target among them

    def loss_and_grads(distinct: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        monkeypatch.setattr(model.features.items, "distinct", distinct)
        model.zero_grad()
        torch.manual_seed(5)  # the same dropout masks
        loss = model_loss(CONFIGS[name].name)(model, batch)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (loss, grads), (ref_loss, ref_grads) = loss_and_grads(True), loss_and_grads(False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-6)


def test_under_bf16_autocast_the_gradients_of_a_repeated_item_still_sum_in_float32() -> None:
    model = _model(QINConfig(embedding_dim=8, net_dropout=0.0)).train()
    batch = _batch(b=64, length=64, pad=0)
    batch.item_seq[:] = 7  # 4,096 positions of one item: a bf16 running sum would stall far below the total

    def grad_of_item_7(autocast: bool) -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model_loss("qin")(model, batch)
        loss.backward()
        return model.features.items.embed.item_id.weight.grad[7].clone()

    exact, mixed = grad_of_item_7(False), grad_of_item_7(True)
    assert torch.linalg.vector_norm(mixed - exact) <= 0.05 * torch.linalg.vector_norm(exact)


@pytest.mark.parametrize("name", ["qin", "qin w/o ASTA", "din", "dcnv3", "sdcnv3"])
def test_a_frozen_item_table_scores_to_the_bit_what_encoding_each_call_scores(name: str) -> None:
    from qin.serving.inference import Scorer

    model = _model(CONFIGS[name])
    batch = _batch(b=40, length=12, pad=3)
    cols = {k: getattr(batch, k).numpy() for k in ("item_seq", "likes_level", "views_level", "item_id")}
    one = {k: v[:1] for k, v in cols.items()}  # a row alone (a request), besides a batch
    live = Scorer(model, 12, SPEC, torch.device("cpu"))
    expected = live.predict(cols), live.predict(one)
    frozen = Scorer(model, 12, SPEC, torch.device("cpu"), frozen=True)
    assert model.features.items.frozen is not None
    assert (frozen.predict(cols) == expected[0]).all() and (frozen.predict(one) == expected[1]).all()


@pytest.mark.parametrize("frozen", [False, True])
def test_an_item_id_outside_the_vocabulary_is_refused(frozen: bool) -> None:
    model = _model(CONFIGS["qin"]).eval()
    if frozen:
        model.features.items.freeze()
    batch = _batch()
    batch.item_seq[0, -1] = SPEC.n_items
    with pytest.raises(IndexError), torch.no_grad():
        model(batch)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_parameter_receives_a_gradient(name: str) -> None:
    model = _model(CONFIGS[name]).train()
    model_loss(CONFIGS[name].name)(model, _batch(b=16)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("name", ["qin", "qin w/o ASTA", "din", "dcnv3", "sdcnv3"])
def test_loss_decreases_on_tiny_data(name: str) -> None:
    model = _model(CONFIGS[name], seed=3).train()
    batches = [_batch(b=64, length=10, pad=2, seed=s) for s in range(4)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(float(bce(model.eval()(b), b.label)) for b in batches) / len(batches)

    before = mean_loss()
    for _ in range(40):
        for b in batches:
            model.train()
            optimizer.zero_grad()
            model_loss(CONFIGS[name].name)(model, b).backward()
            optimizer.step()
    assert mean_loss() < 0.7 * before


def _module_types(model: nn.Module) -> dict[str, str]:
    return {name: type(m).__name__ for name, m in model.named_modules()}


def _changed_modules(switched: nn.Module, base: nn.Module) -> set[str]:
    a, b = _module_types(switched), _module_types(base)
    return {n.split(".")[0] for n in set(a) | set(b) if a.get(n) != b.get(n)}


def test_ablation_wo_qnn_replaces_only_the_interaction_block() -> None:
    model = _model(CONFIGS["qin w/o QNN"])
    assert isinstance(model.interaction, MLP) and not any(
        isinstance(m, QuadraticLayer) for m in model.modules()
    )
    assert _changed_modules(model, _model(CONFIGS["qin"])) == {"interaction"}


def test_ablation_wo_asta_replaces_only_the_attention() -> None:
    model = _model(CONFIGS["qin w/o ASTA"])
    assert isinstance(model.attention, MeanPooling)
    assert _changed_modules(model, _model(QINConfig(embedding_dim=8))) == {"attention"}


def test_ablation_softmax_changes_only_the_attention_weights() -> None:
    relu, soft = _model(QINConfig(embedding_dim=8)).eval(), _model(CONFIGS["qin ASTA w/ SoftMax"]).eval()
    soft.load_state_dict(relu.state_dict())  # the same parameters: only the activation differs
    assert (relu.attention.activation, soft.attention.activation) == ("relu", "softmax")
    batch = _batch()
    assert not torch.allclose(relu(batch), soft(batch))


def test_ablation_wo_prelu_swaps_the_qnn_activation() -> None:
    model = _model(CONFIGS["qin QNN w/o PReLU"])
    layers = [m for m in model.modules() if isinstance(m, QuadraticLayer)]
    assert layers and all(isinstance(layer.act, nn.ReLU) for layer in layers)
    assert not any(isinstance(m, nn.PReLU) for m in model.modules())
    assert _changed_modules(model, _model(QINConfig(embedding_dim=8))) == {"interaction"}


def test_ablation_attention_dropout_drops_attention_weights_in_training_only() -> None:
    model = _model(CONFIGS["qin ASTA w/ Dropout"])
    assert isinstance(model.attention, TargetAttention) and model.attention.dropout.p == pytest.approx(0.1)
    base = _model(QINConfig(embedding_dim=8))
    base.load_state_dict(model.state_dict())
    batch = _batch(b=64, length=30, pad=0)
    torch.testing.assert_close(model.eval()(batch), base.eval()(batch))
    model.attention.train()  # dropout on the attention weights only (the rest stays in eval mode)
    assert not torch.allclose(model(batch), base(batch))


def test_paper_preset_has_the_authors_parameter_count() -> None:
    cfg = preset("paper").model
    spec = default_spec(n_items=91_718, n_tags=11_740)
    model = build_model(
        cfg,
        spec,
        {"item_tags": torch.zeros(91_718, 5, dtype=torch.long), "item_emb_d128": torch.zeros(91_718, 128)},
    )
    assert sum(p.numel() for p in model.parameters()) == 31_244_293


def test_tri_bce_side_weights_vanish_when_the_sides_beat_the_fused_logit() -> None:
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    fused = torch.tensor([0.5, -0.5, 0.2, -0.1])
    better = torch.tensor([3.0, -3.0, 3.0, -3.0])  # lower BCE than fused
    worse = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    torch.testing.assert_close(tri_bce(fused, better, better, labels), bce(fused, labels))
    expected = bce(fused, labels) + (bce(worse, labels) - bce(fused, labels)) * bce(worse, labels)
    torch.testing.assert_close(tri_bce(fused, worse, better, labels), expected)


def test_unknown_model_name_is_refused() -> None:
    cfg = QINConfig().model_copy()
    object.__setattr__(cfg, "name", "dcnv9")
    with pytest.raises(ValueError, match=r"'train\.model\.name': expected one of"):
        build_model(
            cfg,
            SPEC,
            {"item_tags": torch.zeros(60, 5, dtype=torch.long), "item_emb_d128": torch.zeros(60, 128)},
        )


def test_each_registered_model_has_its_settings_network_and_loss_in_one_place() -> None:
    import typing

    import flows.qin_train
    from qin.models import MODELS, config_class
    from qin.training import losses

    assert typing.get_args(flows.qin_train.ModelName) == tuple(MODELS)
    for name, entry in MODELS.items():
        cls = config_class(name)
        assert issubclass(cls, ModelConfig) and entry.loss in losses.LOSSES, name
        assert name in typing.get_args(typing.get_type_hints(cls)["name"]), name
        network = _model(cls(name=name))
        assert type(network).__name__ == entry.network and network.__module__ == entry.module, name
    assert losses.model_loss("sdcnv3") is losses.tri_bce_loss  # declared, not sniffed from the network
    assert {losses.model_loss(n) for n in ("qin", "din", "dcnv3")} == {losses.bce_loss}
    with pytest.raises(ValueError, match=r"params key 'train.model.name': expected one of .*found 'xgb'"):
        config_class("xgb")


def test_sdcnv3_trains_on_tri_bce_of_its_three_logits() -> None:
    model = _model(CONFIGS["sdcnv3"]).eval()  # no dropout: the same logits twice
    batch = _batch(b=16)
    loss = model_loss("sdcnv3")(model, batch)
    assert torch.equal(loss, tri_bce(*model.side_logits(batch), batch.label))
    assert not torch.equal(loss, bce(model(batch), batch.label))
