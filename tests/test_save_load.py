"""Save -> load rebuilds the pruned model exactly, without unpickling anything."""
import json
import re

import pytest
import timm
import torch

import isoprune
from isoprune import _data, _io, _models
from conftest import base_of, inputs_for, make

FAMILIES = [
    ("test_vit", 0.5, {"blocks": 2}),
    ("test_convnext", 0.3, {"stages.2.blocks": 1}),
    ("test_resnet", 0.3, {}),
    ("resnet18", 0.4, {"layer3": 1}),
    ("mobilenetv2_035", 0.3, {}),
    ("cait_micro", 0.5, {}),
    ("convit_micro", 0.5, {}),
    ("twins_svt_micro", 0.5, {}),
    ("test_efficientnet", 0.3, {}),
    ("swin_micro", 0.4, {"layers.2.blocks": 1}),
    ("beit_micro", 0.4, {}),
    ("maxvit_tf_micro", 0.4, {}),
    ("inception_next_micro", 0.4, {}),
    ("mambaout_micro", 0.4, {"stages.2.blocks": 1}),
    ("pit_micro", 0.4, {}),
    ("res2net_micro", 0.4, {"layer1": 1}),
    ("levit_micro", 0.4, {}),
    ("rexnet_micro", 0.4, {}),
    ("dpn_micro", 0.4, {}),
    ("dpn68_micro", 0.4, {}),
    ("cs3darknet_micro", 0.4, {"stages.1.blocks": 1}),
    ("crossvit_micro", 0.4, {}),
    ("fasternet_micro", 0.4, {}),
]


@pytest.mark.parametrize("name,ratio,depth", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_reload_is_identical(tmp_path, name, ratio, depth):
    model = make(name)
    model.isoprune_base = base_of(name)
    isoprune.prune(model, ratio, depth=depth)
    isoprune.save(model, tmp_path / "m")
    loaded = isoprune.load(tmp_path / "m")
    x = inputs_for(model)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.isoprune_plan.to_dict() == model.isoprune_plan.to_dict()
    if depth:
        (path, n), = depth.items()
        assert len(loaded.get_submodule(path)) == len(model.get_submodule(path)) == model.isoprune_plan.depth[0]["blocks"] - n


@pytest.mark.parametrize("wrap", [torch.compile, torch.nn.DataParallel], ids=["compiled", "data parallel"])
def test_a_wrapped_model_is_saved_as_the_model_it_wraps(tmp_path, wrap):
    model = make("test_resnet")
    model.isoprune_base = base_of("test_resnet")
    isoprune.prune(model, 0.3)
    isoprune.save(wrap(model), tmp_path / "m")
    x = inputs_for(model)
    with torch.no_grad():
        assert torch.equal(model(x), isoprune.load(tmp_path / "m")(x))


def test_a_compiled_model_is_refused_with_what_to_prune_instead():
    model = make("test_resnet")
    compiled = torch.compile(model)
    for call in (lambda: isoprune.prune(compiled, 0.3), lambda: isoprune.count(compiled)):
        with pytest.raises(isoprune.IsopruneError, match=r"this model is compiled \(torch.compile\); prune the model it wraps \(model._orig_mod\)"):
            call()
    assert model.conv1[0].out_channels == 16  # untouched


def test_torchvision_base(tmp_path):
    model = make("tv:resnet18")
    isoprune.prune(model, 0.3)
    isoprune.save(model, tmp_path / "m", base={"library": "torchvision", "name": "resnet18", "kwargs": {"num_classes": 10}})
    loaded = isoprune.load(tmp_path / "m")
    x = inputs_for(model)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    isoprune.save(model, tmp_path / "wrong", base="torchvision:resnet18")  # 1000 classes, not 10
    with pytest.raises(isoprune.IsopruneError, match="size mismatch for fc"):
        isoprune.load(tmp_path / "wrong")


@pytest.mark.parametrize("name, classes", [("resnet18", 10), ("resnext50_32x4d", 1000), ("mobilenet_v2", 10)])
def test_a_torchvision_base_is_found_by_its_widths(tmp_path, name, classes):
    """torchvision models keep no name: the builder of their class with the widths they had is it."""
    import torchvision

    model = torchvision.models.get_model(name, num_classes=classes).eval()
    isoprune.prune(model, 0.3, depth={"layer2": 1} if name == "resnet18" else None)
    isoprune.save(model, tmp_path / "m")
    assert _io.read_metadata(tmp_path / "m")["base"] == {"library": "torchvision", "name": name,
                                                           "kwargs": {"num_classes": classes} if classes != 1000 else {}}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), isoprune.load(tmp_path / "m")(x))
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    isoprune.prune(plain, 0.5, example_inputs=x)
    with pytest.raises(isoprune.IsopruneError, match='cannot tell which architecture this Sequential was built from; pass base="timm:NAME"'):
        isoprune.save(plain, tmp_path / "plain")


def test_the_input_size_goes_with_the_model(tmp_path):
    """A model pruned at 48x48 loads with 48x48 as its own input size (timm's config for
    ``test_resnet`` says 160x160), which data configs, and so evaluation and fine-tuning, read."""
    model = make("test_resnet")
    model.isoprune_base = base_of("test_resnet")
    isoprune.prune(model, 0.3, example_inputs=torch.randn(1, 3, 48, 48))
    isoprune.save(model, tmp_path / "m")
    loaded = isoprune.load(tmp_path / "m")
    assert loaded.pretrained_cfg["input_size"] == (3, 48, 48) and model.pretrained_cfg["input_size"] == (3, 160, 160)
    assert _data.data_config(loaded)["input_size"] == (3, 48, 48)
    assert loaded.pretrained_cfg["mean"] == model.pretrained_cfg["mean"]  # the rest of the config is kept
    isoprune.save(model, tmp_path / "trained", input_size=[3, 64, 64])  # as fine-tuning at 64x64 records it
    assert isoprune.load(tmp_path / "trained").pretrained_cfg["input_size"] == (3, 64, 64)
    metadata = json.loads((tmp_path / "m" / "isoprune.json").read_text())
    del metadata["input_size"]  # a directory written before the size was recorded: its plan's
    (tmp_path / "m" / "isoprune.json").write_text(json.dumps(metadata))
    assert isoprune.load(tmp_path / "m").pretrained_cfg["input_size"] == (3, 48, 48)
    whole = make("test_resnet")
    whole.isoprune_base = base_of("test_resnet")
    isoprune.save(whole, tmp_path / "whole", plan=isoprune.plan(whole, 0.0), input_size=[3, 64, 64])
    rebuilt = make("test_resnet", seed=1)
    _models.load_weights(rebuilt, tmp_path / "whole")  # its weights alone (--weights DIR), into a model built anew
    assert rebuilt.pretrained_cfg["input_size"] == (3, 64, 64)


def test_a_saved_model_keeps_its_pretrained_tag(tmp_path):
    """``resnet18.tv_in1k`` (torchvision's weights: bilinear, crop 0.875) is another model than
    ``resnet18``, whose default tag is timm's a1_in1k (bicubic, crop 0.95). Saved and loaded, the
    pruned model keeps the tag, so it is evaluated and fine-tuned with its own data config, and
    ``--teacher original`` gets the weights it was pruned from. So does a timm model built outside
    isoprune, whose config names the tag."""
    tv = _data.data_config(timm.create_model("resnet18.tv_in1k"))
    assert tv["interpolation"] != _data.data_config(timm.create_model("resnet18"))["interpolation"]
    by_name = isoprune.create_model("resnet18.tv_in1k", weights="none", num_classes=10)
    by_hand = timm.create_model("resnet18.tv_in1k", num_classes=10)
    for i, model in enumerate((by_name, by_hand)):
        isoprune.prune(model, 0.3, example_inputs=torch.randn(1, 3, 64, 64))
        isoprune.save(model, tmp_path / str(i), input_size=[3, 224, 224])
        assert json.loads((tmp_path / str(i) / "isoprune.json").read_text())["base"]["name"] == "resnet18.tv_in1k"
        assert _data.data_config(isoprune.load(tmp_path / str(i))) == tv
    made = timm.create_model("resnet18", pretrained_cfg={"architecture": "resnet18", "tag": "mine"})  # a tag timm does not know
    assert _io.base_spec(made)["name"] == "resnet18"


def test_refuses_to_overwrite(tmp_path):
    model = isoprune.prune(make("test_resnet"), 0.3)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(isoprune.IsopruneError, match="not empty"):
        isoprune.save(model, tmp_path / "m")
    isoprune.save(model, tmp_path / "m", overwrite=True)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"  # only isoprune's own files replaced


def test_a_saved_models_file_points_to_its_directory(tmp_path):
    isoprune.save(isoprune.prune(make("test_resnet"), 0.3), tmp_path / "m")
    with pytest.raises(isoprune.IsopruneError, match=re.escape(f"is a file of the model saved in {tmp_path / 'm'}; give that directory")):
        isoprune.load(tmp_path / "m" / "model.safetensors")


def test_pickle_needs_opt_in(tmp_path):
    model = make("test_resnet")
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(isoprune.IsopruneError, match="runs code"):
        isoprune.load(tmp_path / "whole.pth")
    with pytest.warns(UserWarning, match="unpickling"):
        loaded = isoprune.load(tmp_path / "whole.pth", allow_pickle=True)
    x = inputs_for(model)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_plan_for_another_model_is_an_error(tmp_path):
    model = isoprune.prune(make("test_resnet"), 0.3)
    model.isoprune_base = {"library": "timm", "name": "test_convnext", "kwargs": {"num_classes": 10}}
    isoprune.save(model, tmp_path / "m")
    with pytest.raises(isoprune.IsopruneError, match="does not fit"):
        isoprune.load(tmp_path / "m")


def test_truncated_weights_are_an_error(tmp_path):
    model = isoprune.prune(make("test_resnet"), 0.3)
    model.isoprune_base = {"library": "timm", "name": "test_resnet", "kwargs": {"num_classes": 10}}
    isoprune.save(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(isoprune.IsopruneError, match="cannot load"):
        isoprune.load(tmp_path / "m")
