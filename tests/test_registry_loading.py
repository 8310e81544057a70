"""Model references resolve to the right library, and load through the one loader, safely."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from vitkit.errors import ModelLoadError, ModelNotCachedError, ModelTaskMismatchError, UnknownModelError, UsageError
from vitkit.models.loading import is_hub_reachable, load_model, resolve_device, resolve_precision
from vitkit.models.registry import CAPTION, CLASSIFY, SEARCH, INPAINT, LABEL, OPEN_CLIP, TIMM, TRANSFORMERS, resolve, resolve_any


def test_catalogue_alias_and_default() -> None:
    spec = resolve(None, CLASSIFY)
    assert spec.id == "vit-b16" and spec.backend == TIMM and spec.source.startswith("hf-hub:timm/vit_base_patch16_224")
    assert resolve("clip-b32", LABEL).backend == OPEN_CLIP


def test_library_native_references() -> None:
    assert resolve_any("timm/vit_small_patch16_224.augreg_in21k_ft_in1k").source == \
        "hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k"
    assert resolve_any("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", SEARCH).backend == OPEN_CLIP
    assert resolve_any("hf-hub:timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", CLASSIFY).backend == TIMM
    assert resolve_any("facebook/detr-resnet-50", "detect").backend == TRANSFORMERS
    assert resolve_any("ViT-B-32:laion2b_s34b_b79k").backend == OPEN_CLIP
    assert resolve_any("vit_base_patch16_224.augreg2_in21k_ft_in1k").backend == TIMM


def test_unknown_open_clip_tag_is_an_error_not_random_weights() -> None:
    with pytest.raises(UnknownModelError, match="no pretrained weights tagged 'not-a-tag'"):
        resolve_any("ViT-B-32:not-a-tag")


def test_timm_architecture_without_weights_is_refused() -> None:
    import timm

    bare = next(m for m in timm.list_models() if not timm.list_pretrained(f"{m}.*") and m not in timm.list_pretrained())
    with pytest.raises(UnknownModelError, match="no pretrained weights"):
        resolve_any(bare)


def test_misspelling_gets_suggestions() -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_any("clip-b23")
    assert "clip-b32" in info.value.hint


def test_local_folders_detected_by_their_files(tiny_timm_dir: Path, tiny_open_clip_dir: Path,
                                               tiny_transformers_mae_dir: Path) -> None:
    assert resolve_any(str(tiny_timm_dir)).backend == TIMM
    assert resolve_any(f"local-dir:{tiny_timm_dir}").source == f"local-dir:{tiny_timm_dir.resolve()}"
    clip = resolve_any(str(tiny_open_clip_dir))
    assert clip.backend == OPEN_CLIP and {LABEL, SEARCH} <= clip.capabilities
    mae = resolve_any(str(tiny_transformers_mae_dir))
    assert mae.backend == TRANSFORMERS and INPAINT in mae.capabilities


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="not a model folder"):
        resolve_any(str(tmp_path))
    with pytest.raises(UnknownModelError, match="does not exist"):
        resolve_any(str(tmp_path / "nope"))


def test_capability_mismatch(tiny_open_clip_dir: Path) -> None:
    with pytest.raises(ModelTaskMismatchError):
        resolve(str(tiny_open_clip_dir), CLASSIFY)


def test_all_three_libraries_load_through_the_loader(tiny_timm_dir: Path, tiny_open_clip_dir: Path,
                                                     tiny_transformers_mae_dir: Path) -> None:
    timm_model = load_model(resolve(str(tiny_timm_dir), CLASSIFY), CLASSIFY, "cpu", "fp32")
    assert timm_model.module(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    assert len(timm_model.assets.labels) == 1000
    clip = load_model(resolve(str(tiny_open_clip_dir), SEARCH), SEARCH, "cpu", "fp32")
    assert clip.module.encode_text(clip.assets.tokenizer(["a cat"])).shape == (1, 32)
    mae = load_model(resolve(str(tiny_transformers_mae_dir), INPAINT), INPAINT, "cpu", "fp32")
    assert type(mae.module).__name__ == "ViTMAEForPreTraining" and mae.assets.processor is not None


def test_loaded_models_are_cached_per_process(tiny_timm_dir: Path) -> None:
    spec = resolve(str(tiny_timm_dir), CLASSIFY)
    assert load_model(spec, CLASSIFY, "cpu", "fp32") is load_model(spec, CLASSIFY, "cpu", "fp32")


def test_open_clip_folder_without_weights_is_refused(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_open_clip_dir / "open_clip_config.json", tmp_path / "open_clip_config.json")
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(resolve(str(tmp_path), SEARCH), SEARCH, "cpu", "fp32")


def test_timm_folder_without_weights_is_refused(tiny_timm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_timm_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError) as info:
        load_model(resolve(str(tmp_path), CLASSIFY), CLASSIFY, "cpu", "fp32")
    assert info.value.exit_code == 3


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['VITKIT_PAYLOAD_MARKER']}",))


def test_pickle_payload_is_never_executed(tiny_timm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("VITKIT_PAYLOAD_MARKER", str(marker))
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_timm_dir / "config.json", folder / "config.json")
    torch.save({"weights": _Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickled code"):
        load_model(resolve(str(folder), CLASSIFY), CLASSIFY, "cpu", "fp32")
    assert not marker.exists()


def test_not_cached_offline_names_pull() -> None:
    with pytest.raises(ModelNotCachedError) as info:
        load_model(resolve("vit-s16", CLASSIFY), CLASSIFY, "cpu", "fp32")
    assert "vitkit models pull vit-s16" in info.value.hint


def test_unreachable_hub_detected_quickly() -> None:
    assert is_hub_reachable("https://127.0.0.1:9", timeout=1.0) is False


def test_device_and_precision() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_precision("auto", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")


def test_captioning_is_read_from_the_open_clip_config_not_the_name() -> None:
    import open_clip

    assert CAPTION in resolve_any("coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k").capabilities
    assert CAPTION not in resolve_any("ViT-B-32:laion2b_s34b_b79k").capabilities
    assert "multimodal_cfg" in open_clip.get_model_config("coca_ViT-B-32")


def test_every_backend_honours_the_protocol(tiny_timm_dir: Path, tiny_open_clip_dir: Path,
                                            tiny_transformers_mae_dir: Path) -> None:
    from vitkit.models.backends import get_backend, list_backends

    assert [b.name for b in list_backends()] == [OPEN_CLIP, TIMM, TRANSFORMERS]
    names = ("resolve_name", "spec_for_folder", "spec_for_hub", "load", "draft_size", "hot_module", "hub_repo_id",
             "class_names")
    assert all(callable(getattr(b, n)) for b in list_backends() for n in names)
    clip = load_model(resolve(str(tiny_open_clip_dir), SEARCH), SEARCH, "cpu", "fp32")
    assert get_backend(OPEN_CLIP).hot_module(clip.module) is clip.module.visual  # what --compile compiles
    assert clip.draft_size == 32
    timm_model = load_model(resolve(str(tiny_timm_dir), CLASSIFY), CLASSIFY, "cpu", "fp32")
    assert get_backend(TIMM).hot_module(timm_model.module) is timm_model.module and timm_model.draft_size == 249
    mae = load_model(resolve(str(tiny_transformers_mae_dir), INPAINT), INPAINT, "cpu", "fp32")
    assert mae.draft_size == 32
    # A folder in one library's format is not mistaken for another's.
    assert get_backend(TIMM).spec_for_folder(tiny_open_clip_dir, "x") is None
    assert get_backend(TRANSFORMERS).spec_for_folder(tiny_timm_dir, "x") is None
    assert get_backend(OPEN_CLIP).spec_for_folder(tiny_transformers_mae_dir, "x") is None


def test_capability_errors_use_command_names(tiny_open_clip_dir: Path) -> None:
    with pytest.raises(ModelTaskMismatchError) as info:
        resolve(str(tiny_open_clip_dir), CLASSIFY)
    assert "cannot classify; it can: embed, label, search (index, search, dedup)" in info.value.message
    assert "--task classify" in info.value.hint


def test_a_timm_model_without_a_head_embeds_but_cannot_classify(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    from vitkit.models.registry import ATTENTION, EMBED

    torch.manual_seed(0)
    headless = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1, embed_dim=32,
                                 num_heads=2)
    save_for_hf(headless, str(tmp_path / "headless"), safe_serialization=True)
    spec = resolve_any(str(tmp_path / "headless"))
    assert spec.capabilities == {EMBED, ATTENTION}
    with pytest.raises(ModelTaskMismatchError, match="cannot classify; it can: attention, embed"):
        resolve(str(tmp_path / "headless"), CLASSIFY)
    assert resolve("dino-s16", EMBED).source == "hf-hub:timm/vit_small_patch16_224.dino"
    with pytest.raises(ModelTaskMismatchError, match="cannot classify"):
        resolve("dino-s16", CLASSIFY)
