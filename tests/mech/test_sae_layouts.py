"""SAEs written by SAELens, saev and ViT-Prisma: files written here exactly as those projects write them
(their save code, followed line by line: they cannot be installed here), loaded by clipx, and run against
a hand-written copy of each project's forward; SAELens' layout written by clipx and read back the way
SAELens reads it; damaged and mismatched files refused naming what is wrong."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipx.mech.sae.attach import attach_sae
from clipx.mech.sae.autoencoder import SAEConfig, SparseAutoencoder
from floats import assert_float32_close

HOOK = "vision.blocks.1.hook_resid_post"  # the tiny checkpoint's last block: width 48
D_IN, D_SAE = 48, 96


def weights(threshold=False, seed=0):
    """An SAE's tensors as the three projects name and shape them, b_enc negative enough that some
    features stay off, decoder rows of varied norm (SAELens' TopK ranks by them when told to)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5,
               "W_dec": torch.randn(D_SAE, D_IN, generator=g) * (0.5 + torch.rand(D_SAE, 1, generator=g)),
               "b_enc": torch.randn(D_SAE, generator=g) * 0.3 - 0.2,
               "b_dec": torch.randn(D_IN, generator=g)}
    if threshold:
        tensors["threshold"] = torch.rand(D_SAE, generator=g) * 0.5
    return tensors


def activations(seed=1):
    return torch.randn(3, 5, D_IN, generator=torch.Generator().manual_seed(seed)) * 2 + 0.5


def assert_runs_as(sae, reference, x):
    features, reconstruction = reference(x)
    assert_float32_close(sae.encode(x), features, what="features")
    assert_float32_close(sae(x)[0], reconstruction, what="reconstruction")
    assert (features == 0).any() and (features != 0).any()  # a check of the sparsifying step, not of zeros


# --- SAELens ------------------------------------------------------------------------------------------
def saelens_forward(cfg, t):
    """SAELens 6's StandardSAE / TopKSAE / JumpReLUSAE encode and decode (sae_lens/saes/*.py), written out."""
    def run(x):
        norm = cfg.get("normalize_activations", "none")
        if norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            x = x / (std + 1e-5)
        elif norm == "constant_norm_rescale":
            coefficient = (cfg["d_in"] ** 0.5) / x.norm(dim=-1, keepdim=True)
            x = x * coefficient
        sae_in = x - t["b_dec"] * cfg.get("apply_b_dec_to_input", True)
        hidden_pre = sae_in @ t["W_enc"] + t["b_enc"]
        architecture = cfg["architecture"]
        rescale = architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False)
        if architecture == "standard":
            acts = torch.relu(hidden_pre)
        elif architecture == "jumprelu":
            acts = torch.relu(hidden_pre) * (hidden_pre > t["threshold"]).to(hidden_pre.dtype)
        else:
            if rescale:
                hidden_pre = hidden_pre * t["W_dec"].norm(dim=-1)
            values, indices = torch.topk(hidden_pre, k=cfg["k"], dim=-1, sorted=False)
            acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())
        decode_acts = acts / t["W_dec"].norm(dim=-1) if rescale else acts
        out = decode_acts @ t["W_dec"] + t["b_dec"]
        if norm == "layer_norm":
            out = out * std + mu
        elif norm == "constant_norm_rescale":
            out = out / coefficient
        return acts, out
    return run


def write_saelens(folder, cfg, tensors, sparsity=True):
    """As SAELens' SAE.save_model: save_file(state_dict), json.dump(cfg.to_dict()); and a sparsity file."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "sae_weights.safetensors")
    with open(folder / "cfg.json", "w") as f:
        json.dump(cfg, f)
    if sparsity:
        save_file({"sparsity": torch.full((cfg["d_sae"],), -3.0)}, folder / "sparsity.safetensors")
    return folder


def saelens_6(architecture, **extra):
    """SAEConfig.to_dict() of SAELens 6: the fields, metadata, architecture (and the class's own fields)."""
    return {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.5.1", "sae_lens_training_version": "6.5.1",
                         "model_name": "clip", "hook_name": "blocks.1.hook_resid_post", "hook_head_index": None,
                         "prepend_bos": True, "context_size": 17},
            "architecture": architecture, **extra}


def saelens_5(**extra):
    """A cfg.json of SAELens 5 (flat, activation_fn_str, no sae_lens_version): read as its
    handle_pre_6_0_config renames it."""
    return {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
            "model_name": "clip", "hook_name": "blocks.1.hook_resid_post", "hook_layer": 1,
            "hook_head_index": None, "activation_fn_str": "relu", "activation_fn_kwargs": {},
            "apply_b_dec_to_input": True, "finetuning_scaling_factor": False, "context_size": 17,
            "normalize_activations": "none", "prepend_bos": True, "sae_lens_training_version": "5.3.0", **extra}


SAELENS_CASES = {
    "standard": (saelens_6("standard"), False),
    "topk": (saelens_6("topk", k=7, rescale_acts_by_decoder_norm=False), False),
    "topk-rescaled-by-decoder-norm": (saelens_6("topk", k=7, rescale_acts_by_decoder_norm=True), False),
    "jumprelu-no-b_dec-on-input": (saelens_6("jumprelu", apply_b_dec_to_input=False), True),
    "standard-layer-norm": (saelens_6("standard", normalize_activations="layer_norm"), False),
    "topk-constant-norm": (saelens_6("topk", k=5, normalize_activations="constant_norm_rescale"), False),
    "expected-average-is-no-step": (saelens_6("standard", normalize_activations="expected_average_only_in"),
                                    False),
    "5.x-topk": (saelens_5(activation_fn_str="topk", activation_fn_kwargs={"k": 6}), False),
    "5.x-relu-bool-norm": (saelens_5(normalize_activations=False), False),
}


@pytest.mark.parametrize("case", SAELENS_CASES)
def test_saelens_folder_runs_as_saelens_runs_it(tmp_path, case):
    cfg, threshold = SAELENS_CASES[case]
    tensors = weights(threshold)
    folder = write_saelens(tmp_path / case, cfg, tensors)
    sae = SparseAutoencoder.load(folder, tower="vision")
    assert sae.config.hook_name == HOOK and sae.config.positions == "all"
    reference = dict(cfg, architecture="topk", k=cfg["activation_fn_kwargs"]["k"]) if case == "5.x-topk" else cfg
    assert_runs_as(sae, saelens_forward(reference, tensors), activations())
    assert torch.equal(SparseAutoencoder.from_saelens(folder, tower="vision").W_dec, sae.W_dec)


def test_saelens_topk_on_a_decoder_of_unit_rows_loads_bit_identical(tmp_path):
    tensors = weights()
    tensors["W_dec"] = torch.nn.functional.normalize(tensors["W_dec"], dim=1)
    sae = SparseAutoencoder.load(write_saelens(tmp_path, saelens_6("topk", k=7), tensors), tower="vision")
    for name, tensor in tensors.items():
        assert torch.equal(getattr(sae, name), tensor), name
    assert sae.config.activation == "topk" and sae.config.k == 7 and sae.config.subtract_b_dec


def test_saelens_5_scaling_factor_of_ones_is_dropped(tmp_path):
    tensors = {**weights(), "scaling_factor": torch.ones(D_SAE)}
    sae = SparseAutoencoder.load(write_saelens(tmp_path, saelens_5(), tensors), tower="vision")
    assert_runs_as(sae, saelens_forward(saelens_5(), tensors), activations())


def tampered(metadata=None, tensors=None, **cfg):
    def write(folder):
        config = saelens_6("standard")
        config.update(cfg)
        config["metadata"].update(metadata or {})
        write_saelens(folder, config, {**weights(), **(tensors or {})})
    return write


@pytest.mark.parametrize("write, tower, message", [
    (tampered(), None, "hook 'blocks.1.hook_resid_post' names no tower; say which with tower='vision'"),
    (tampered(architecture="gated"), "vision", "architecture 'gated' is not one clipx runs"),
    (tampered(metadata={"hook_name": "blocks.1.attn.hook_z"}, reshape_activations="hook_z"), "vision",
     "hook_z"),
    (tampered(metadata={"hook_head_index": 3}), "vision", "one head's"),
    (tampered(metadata={"hook_name": "blocks.1.hook_resid_pst"}), "vision", "hook 'blocks.1.hook_resid_pst' "
                                                                             "is none clipx splices"),
    (tampered(metadata={"hook_name": None}), "vision", "names no hook"),
    (tampered(d_sae=95), "vision", "'W_dec' has shape \\(96, 48\\).*d_sae=95"),
    (tampered(normalize_activations="batch_norm"), "vision", "normalize_activations='batch_norm'"),
    (tampered(tensors={"scaling_factor": torch.full((D_SAE,), 2.0)}), "vision", "finetuning scaling_factor"),
    (tampered(tensors={"threshold": torch.zeros(D_SAE)}), "vision", "holds tensor 'threshold'.*'relu'"),
    (lambda f: (write_saelens(f, saelens_6("standard"), weights()) / "sae_weights.safetensors").write_bytes(b"x"),
     "vision", "sae_weights.safetensors"),
], ids=["no-tower", "gated", "hook_z", "head", "unknown-hook", "no-hook", "wrong-d_sae", "unknown-norm",
        "scaling-factor", "extra-tensor", "damaged"])
def test_saelens_folders_clipx_cannot_run_the_same_are_refused(tmp_path, write, tower, message):
    write(tmp_path)
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.load(tmp_path, tower=tower)


def test_saelens_folder_without_weights_names_them(tmp_path):
    write_saelens(tmp_path, saelens_6("standard"), weights())
    (tmp_path / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no sae_weights.safetensors"):
        SparseAutoencoder.from_saelens(tmp_path, tower="vision")


def read_like_saelens(folder):
    """What SAELens' sae_lens_disk_loader and handle_config_defaulting read from a folder."""
    cfg = json.loads((folder / "cfg.json").read_text())
    version = cfg.get("sae_lens_version") or cfg["metadata"].get("sae_lens_version")
    assert version and int(version.split(".")[0]) >= 6  # else SAELens would read it as a 5.x config
    return cfg, load_file(folder / "sae_weights.safetensors")


@pytest.mark.parametrize("kwargs", [
    dict(k=5, tied=True, input_scale=0.37, positions="patches"),
    dict(activation="relu", k=None, l1=1e-3, input_scale=2.5, subtract_b_dec=False, input_norm="layer_norm"),
    dict(activation="jumprelu", k=None, input_norm="constant_norm_rescale"),
], ids=["topk-tied-scaled", "relu-layer-norm", "jumprelu"])
def test_save_in_saelens_layout_reads_back_as_saelens_runs_it(tmp_path, kwargs):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(HOOK, D_IN, D_SAE, **kwargs))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(-0.2, 0.3)
        if sae.threshold is not None:
            sae.threshold.uniform_(0, 0.5)
    folder = sae.save(tmp_path / "saelens", format="saelens")
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg, tensors = read_like_saelens(folder)
    assert cfg["metadata"]["hook_name"] == HOOK and set(tensors) == set(weights(sae.threshold is not None))
    x = activations()
    features, reconstruction = saelens_forward(cfg, tensors)(x)
    assert_float32_close(features, sae.encode(x), what="features")
    assert_float32_close(reconstruction, sae(x)[0], what="reconstruction")
    again = SparseAutoencoder.load(folder)  # its hook name carries the tower
    assert again.config.hook_name == HOOK and again.config.positions == sae.config.positions
    assert_float32_close(again(x)[0], sae(x)[0])


def test_save_refuses_what_saelens_cannot_hold(tmp_path):
    sae = SparseAutoencoder(SAEConfig(HOOK, D_IN, D_SAE, k=4, topk_relu=False))
    with pytest.raises(ValueError, match="SAELens' TopK rectifies"):
        sae.save(tmp_path, format="saelens")
    with pytest.raises(ValueError, match="format must be one of"):
        sae.save(tmp_path, format="saev")


# --- saev ---------------------------------------------------------------------------------------------
def write_saev(path, header, tensors):
    """As saev.nn.modeling.dump: orjson's compact JSON and a newline, then torch.save of the state dict."""
    with open(path, "wb") as fd:
        fd.write(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        torch.save(tensors, fd)
    return path


def saev_header(activation, schema=5):
    return {"schema": schema, "cfg": {"d_model": D_IN, "d_sae": D_SAE, "activation": activation,
                                      "reinit_blend": 0.8, "reinit_enc_dec_tranpose": True,
                                      "remove_parallel_grads": True, "normalize_w_dec": True},
            "commit": "3d73f1f", "lib": "1.2.0"}


def saev_forward(kind, t, subtract_b_dec=False, k=None):
    """saev's SparseAutoencoder.encode / decode and its activations (eval mode), written out."""
    def run(x):
        h_x = (x - t["b_dec"] if subtract_b_dec else x) @ t["W_enc"] + t["b_enc"]
        if kind == "Relu":
            f_x = torch.relu(h_x)
        elif kind == "TopK":
            _, idxs = torch.topk(h_x, k, dim=-1, sorted=False)
            f_x = torch.zeros_like(h_x).scatter(-1, idxs, 1.0) * h_x
        else:
            threshold = t["activation.threshold"]
            f_x = torch.where(h_x > threshold, h_x, torch.zeros_like(h_x)) if threshold > 0 else \
                torch.where(h_x > 0, h_x, torch.zeros_like(h_x))
        return f_x, f_x @ t["W_dec"] + t["b_dec"]
    return run


def test_saev_topk_keeps_its_values_unrectified(tmp_path):
    tensors = weights()
    tensors["b_enc"] = tensors["b_enc"] - 3.0  # fewer than k positive pre-activations: negatives kept
    activation = {"cls": "TopK", "params": {"top_k": 7, "sparsity": {"cls": "NoSparsity", "params": {}},
                                            "aux": {"cls": "AuxK", "params": {"k_aux": 512, "alpha": 0.03125}}}}
    path = write_saev(tmp_path / "sae.pt", saev_header(activation), tensors)
    sae = SparseAutoencoder.load(path, hook_name=HOOK)
    assert sae.config.hook_name == HOOK and sae.config.positions == "patches" and not sae.config.subtract_b_dec
    x = activations()
    assert (sae.encode(x) < 0).any()
    assert_runs_as(sae, saev_forward("TopK", tensors, k=7), x)


@pytest.mark.parametrize("threshold", [0.4, -0.1], ids=["learned", "not-yet-positive"])
def test_saev_batchtopk_runs_at_its_inference_threshold(tmp_path, threshold):
    tensors = {**weights(), "activation.threshold": torch.tensor(threshold)}
    activation = {"cls": "BatchTopK", "params": {"top_k": 7, "momentum": 0.1,
                                                 "sparsity": {"cls": "NoSparsity", "params": {}}}}
    sae = SparseAutoencoder.from_saev(write_saev(tmp_path / "sae.pt", saev_header(activation), tensors), HOOK)
    assert sae.config.activation == "jumprelu"
    assert_runs_as(sae, saev_forward("BatchTopK", tensors), activations())


def test_saev_relu_reads_its_l1_coefficient(tmp_path):
    tensors = weights()
    activation = {"cls": "Relu", "params": {"sparsity": {"cls": "L1Sparsity", "params": {"coeff": 0.0004}},
                                            "aux": {"cls": "NoAux", "params": {}}}}
    sae = SparseAutoencoder.from_saev(write_saev(tmp_path / "sae.pt", saev_header(activation), tensors), HOOK,
                                      positions="all")
    assert sae.config.l1 == 0.0004 and sae.config.positions == "all"
    assert_runs_as(sae, saev_forward("Relu", tensors), activations())


def test_saev_files_from_before_schemas_subtract_b_dec_as_saev_then_did(tmp_path):
    tensors = weights()
    legacy = {"d_vit": D_IN, "exp_factor": 2, "n_reinit_samples": 524288, "l1_coeff": 0.00004, "seed": 0,
              "remove_parallel_grads": True, "normalize_w_dec": True}
    path = write_saev(tmp_path / "sae.pt", legacy, tensors)
    assert_runs_as(SparseAutoencoder.from_saev(path, HOOK), saev_forward("Relu", tensors, subtract_b_dec=True),
                   activations())
    schema_1 = {"schema": 1, "cls": "Relu", "cfg": {"d_vit": D_IN, "exp_factor": 2, "seed": 0}, "commit": "x",
                "lib": "0.1"}
    path = write_saev(tmp_path / "schema1.pt", schema_1, tensors)
    assert SparseAutoencoder.from_saev(path, HOOK).config.subtract_b_dec
    # as today's saev runs it, when asked
    assert_runs_as(SparseAutoencoder.from_saev(path, HOOK, subtract_b_dec=False), saev_forward("Relu", tensors),
                   activations())


def test_saev_files_clipx_cannot_read_are_refused(tmp_path):
    relu = {"cls": "Relu", "params": {}}
    good = write_saev(tmp_path / "good.pt", saev_header(relu), weights())
    with pytest.raises(TypeError, match="hook_name"):
        SparseAutoencoder.load(good)
    with pytest.raises(ValueError, match="names no tower"):
        SparseAutoencoder.from_saev(good, "blocks.1.hook_resid_post")
    cases = {
        "schema 9": (saev_header(relu, schema=9), weights()),
        "activation 'Matryoshka'": (saev_header({"cls": "Matryoshka", "params": {}}), weights()),
        "'b_dec' has shape \\(40,\\)": (saev_header(relu), {**weights(), "b_dec": torch.zeros(40)}),
        "without its inference threshold": (saev_header({"cls": "BatchTopK", "params": {"top_k": 3}}), weights()),
    }
    for i, (message, (header, tensors)) in enumerate(cases.items()):
        with pytest.raises(ValueError, match=message):
            SparseAutoencoder.from_saev(write_saev(tmp_path / f"{i}.pt", header, tensors), HOOK)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ValueError, match="the state dict after the header does not read"):
        SparseAutoencoder.from_saev(truncated, HOOK)
    not_saev = tmp_path / "not-saev.pt"
    not_saev.write_bytes(b"{not json\n")
    with pytest.raises(ValueError, match="does not start with saev's JSON header line"):
        SparseAutoencoder.load(not_saev, hook_name=HOOK)


# --- ViT-Prisma -----------------------------------------------------------------------------------------
@dataclass
class VisionModelSAERunnerConfig:
    """The fields of ViT-Prisma's config that its SAE reads (vit_prisma/sae/config.py), with its defaults."""

    model_name: str = "open-clip:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"
    hook_point_layer: int = 1
    layer_subtype: str = "hook_resid_post"
    hook_point_head_index: int | None = None
    use_patches_only: bool = False
    architecture: str = "standard"
    expansion_factor: int = 2
    is_transcoder: bool = False
    _device: str = "cpu"
    _dtype: str = "float32"
    d_in: int = D_IN
    activation_fn_str: str = "topk"
    activation_fn_kwargs: dict = field(default_factory=lambda: {"k": 7})
    cls_token_only: bool = False
    normalize_activations: str = "layer_norm"
    l1_coefficient: float = 0.0002


@pytest.fixture()
def prisma_module(monkeypatch):
    """vit_prisma.sae.config importable while a test writes a checkpoint (torch.save pickles the class by
    name); calling the fixture's value removes it again, to read as a user without vit_prisma would."""
    names = ["vit_prisma", "vit_prisma.sae", "vit_prisma.sae.config"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(VisionModelSAERunnerConfig, "__module__", "vit_prisma.sae.config")
    sys.modules["vit_prisma.sae.config"].VisionModelSAERunnerConfig = VisionModelSAERunnerConfig

    def forget():
        for name in names:
            monkeypatch.delitem(sys.modules, name)
    return forget


def prisma_forward(cfg, t):
    """ViT-Prisma's StandardSparseAutoencoder.encode / decode (vit_prisma/sae/sae.py), written out."""
    def run(x):
        if cfg.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            x = x / (std + 1e-5)
        hidden_pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
        if cfg.activation_fn_str == "relu":
            acts = torch.relu(hidden_pre)
        else:
            topk = torch.topk(hidden_pre, k=cfg.activation_fn_kwargs["k"], dim=-1)
            acts = torch.zeros_like(hidden_pre).scatter_(-1, topk.indices, torch.relu(topk.values))
        out = acts @ t["W_dec"] + t["b_dec"]
        if cfg.normalize_activations == "layer_norm":
            out = out * std + mu
        return acts, out
    return run


def test_prisma_checkpoint_with_its_pickled_config_runs_as_prisma_runs_it(tmp_path, prisma_module):
    cfg, tensors = VisionModelSAERunnerConfig(), weights()
    path = tmp_path / "n_images_2600058.pt"
    torch.save({"cfg": cfg, "state_dict": tensors}, path)  # as Prisma's save_model
    prisma_module()
    sae = SparseAutoencoder.load(path)
    assert sae.config.hook_name == HOOK and sae.config.positions == "all" and sae.config.input_norm == "layer_norm"
    assert_runs_as(sae, prisma_forward(cfg, tensors), activations())


def test_prisma_folder_of_config_json_and_state_dict(tmp_path, prisma_module):
    """As the published checkpoints: config.json (save_config: asdict, indent 4) and the weights."""
    cfg = VisionModelSAERunnerConfig(activation_fn_str="relu", activation_fn_kwargs={}, use_patches_only=True,
                                     normalize_activations="none", layer_subtype="ln2.hook_normalized")
    tensors = weights()
    (tmp_path / "config.json").write_text(json.dumps(vars(cfg), indent=4))
    torch.save(tensors, tmp_path / "weights.pt")
    torch.save(torch.zeros(D_SAE), tmp_path / "n_images_26_log_feature_sparsity.pt")
    sae = SparseAutoencoder.load(tmp_path)
    assert sae.config.hook_name == "vision.blocks.1.ln2.hook_normalized" and sae.config.positions == "patches"
    assert sae.config.activation == "relu" and sae.config.l1 == 0.0002
    assert_runs_as(sae, prisma_forward(cfg, tensors), activations())


@pytest.mark.parametrize("change, message", [
    (dict(cls_token_only=True), "class token only"),
    (dict(architecture="gated"), "architecture 'gated'"),
    (dict(is_transcoder=True), "a transcoder"),
    (dict(activation_fn_str="tanh-relu"), "activation 'tanh-relu'"),
    (dict(hook_point_head_index=2), "one head's"),
    (dict(expansion_factor=3), "'W_dec' has shape \\(96, 48\\)"),
], ids=["cls-only", "gated", "transcoder", "tanh-relu", "head", "wrong-width"])
def test_prisma_checkpoints_clipx_cannot_run_the_same_are_refused(tmp_path, prisma_module, change, message):
    torch.save({"cfg": VisionModelSAERunnerConfig(**change), "state_dict": weights()}, tmp_path / "sae.pt")
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder.from_prisma(tmp_path / "sae.pt")


def test_prisma_files_that_are_no_sae_or_run_code_are_refused(tmp_path):
    torch.save({"cfg": {"d_in": D_IN}, "state_dict": weights(), "extra": torch.nn.Linear(2, 2)}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="pickles torch.nn.modules.linear.Linear.*does not unpickle"):
        SparseAutoencoder.load(tmp_path / "a.pt")
    (tmp_path / "b").mkdir()
    torch.save(weights(), tmp_path / "b" / "weights.pt")
    with pytest.raises(FileNotFoundError, match="bare state dict and no config.json"):
        SparseAutoencoder.from_prisma(tmp_path / "b" / "weights.pt")
    (tmp_path / "c.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="does not read as a torch checkpoint"):
        SparseAutoencoder.load(tmp_path / "c.pt")


# --- spliced into the model ----------------------------------------------------------------------------
def test_an_imported_sae_with_an_input_norm_splices_its_own_reconstruction(eager_model, tmp_path):
    """A layer_norm SAE's reconstruction needs its input's statistics: the splice passes them."""
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg, tensors = saelens_6("topk", k=9, normalize_activations="layer_norm"), weights()
    sae = SparseAutoencoder.load(write_saelens(tmp_path, cfg, tensors), tower="vision")
    with torch.no_grad():
        with eager_model.recording(HOOK) as cache:
            eager_model.encode_image(pixel_values)
        x = cache[HOOK]
        with attach_sae(eager_model, sae, splice=True), eager_model.recording(HOOK) as spliced:
            eager_model.encode_image(pixel_values)
    assert_float32_close(spliced[HOOK], saelens_forward(cfg, tensors)(x)[1])
    with pytest.raises(ValueError, match="decode\\(features, inputs=activations\\)"):
        sae.decode(sae.encode(x))
