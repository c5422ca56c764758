"""Models from the Hugging Face Hub (``hf-hub:OWNER/REPO``) and from a folder of one
(``local-dir:PATH``), as timm reads them: pruned, saved, loaded and taught from, with no network."""
import os
import subprocess
import sys

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

import isoprune
from isoprune import _data, _finetune, _io, _models
from conftest import lively, run_cli

MEAN = (0.1, 0.2, 0.3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder as timm's ``save_for_hf`` (and ``huggingface-cli download``) writes one: a ViT
    fine-tuned for 10 classes at 32x32, with images normalised its own way."""
    out = tmp_path_factory.mktemp("hub") / "digits-vit"
    model = lively(timm.create_model("test_vit", num_classes=10, img_size=32))
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": MEAN, "std": (0.3, 0.3, 0.3), "input_size": (3, 32, 32)}
    save_for_hf(model, out, model_args={"num_classes": 10, "img_size": 32}, safe_serialization=True)
    return out


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_a_folder_is_pruned_with_its_head_weights_and_data_config(capsys, tmp_path, folder, monkeypatch):
    """The pruned model is the folder's architecture with its arguments (10 classes, 32x32) and
    weights; loaded, it prepares images as the folder's config says; ``--teacher original`` is the
    folder's model. The same model built by timm and saved through the API records the same base."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "prune", "--model", f"local-dir:{folder}", "--ratios", "0.5")
    assert code == 0, err
    out = tmp_path / "pruned" / "test_vit"  # named after the architecture the folder's config names
    base = _io.read_metadata(out)["base"]
    assert base["name"] == "test_vit" and base["source"] == f"local-dir:{folder}"
    assert base["kwargs"]["num_classes"] == 10 and base["kwargs"]["img_size"] == [32, 32]
    code, said, _ = run_cli(capsys, "inspect", out)
    assert code == 0 and f"base timm:test_vit {base['kwargs']} from local-dir:{folder}, input [3, 32, 32]" in said
    loaded = isoprune.load(out)
    assert _data.data_config(loaded)["mean"] == MEAN and _data.data_config(loaded)["input_size"] == (3, 32, 32)
    direct = timm.create_model(f"local-dir:{folder}", pretrained=True)
    whole = outputs(direct)
    isoprune.prune(direct, 0.5)
    assert torch.equal(outputs(direct), outputs(loaded))
    isoprune.save(direct, tmp_path / "api")
    assert _io.read_metadata(tmp_path / "api")["base"] == base
    teacher = _finetune.teacher("original", _io.read_metadata(out), 10, side=32)
    assert torch.equal(outputs(teacher), whole)
    moved = {**base, "source": f"local-dir:{tmp_path / 'moved'}"}  # the folder gone since
    with pytest.raises(isoprune.IsopruneError, match=r"teacher='original': no timm model folder at .*moved.*; pass teacher=PATH or NAME, or none"):
        _finetune.teacher("original", {**_io.read_metadata(out), "base": moved}, 10, side=32)


def test_a_hub_model_is_read_from_the_cache_offline(tmp_path, folder):
    """With ``HF_HUB_OFFLINE=1``, ``hf-hub:me/digits-vit`` is read from the Hugging Face cache
    (as ``huggingface-cli download`` leaves it); a repo not there is one error line."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--digits-vit"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for item in folder.iterdir():
        (repo / "snapshots" / commit / item.name).write_bytes(item.read_bytes())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))

    def prune(name, out):
        return subprocess.run([sys.executable, "-m", "isoprune.cli", "prune", "--model", name, "--ratios", "0.5", "--out", str(out)],
                              capture_output=True, text=True, timeout=300, env=env)

    done = prune("hf-hub:me/digits-vit", tmp_path / "p")
    assert done.returncode == 0, done.stderr
    assert _io.read_metadata(tmp_path / "p")["base"]["source"] == "hf-hub:me/digits-vit"
    direct = timm.create_model(f"local-dir:{folder}", pretrained=True)
    isoprune.prune(direct, 0.5)
    assert torch.equal(outputs(isoprune.load(tmp_path / "p")), outputs(direct))
    done = prune("hf-hub:me/absent", tmp_path / "q")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("isoprune: error: cannot read the config of hf-hub:me/absent") and "not in the Hugging Face cache" in lines[0]
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("name, said", [
    ("local-dir:{tmp}/nothing", "no timm model folder at {tmp}/nothing (no config.json in it); a local-dir: folder holds"),
    ("{folder}", "is the folder of a timm model, not a model name; give it as local-dir:{folder}"),
    ("hf:me/digits-vit", "Unknown model source 'hf'"),
    ("me/digits-vit", "no model or directory 'me/digits-vit'; a Hugging Face Hub repo? give it as hf-hub:me/digits-vit"),
    ("./pruned/deit_s", "no model or directory './pruned/deit_s'; check the path"),
])
def test_a_source_given_wrongly_says_how_to_give_it(capsys, tmp_path, folder, name, said):
    name, said = (text.format(tmp=tmp_path, folder=folder) for text in (name, said))
    code, _, err = run_cli(capsys, "prune", "--model", name, "--ratios", "0.5", "--out", tmp_path / "out")
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_source_names_its_architecture_and_classes(folder):
    assert _models.architecture(f"local-dir:{folder}") == "test_vit"
    assert _models.head_classes(f"local-dir:{folder}", "pretrained") == 10
