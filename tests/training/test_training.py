"""Training end to end on CPU: synthetic talking videos -> `ditto prepare` -> `ditto train` -> motion stage.

Everything runs with the tiny profile and generated (synthetic) weights; the videos are a few seconds long.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ditto_app.cli import main as ditto
from ditto_training.formats import (
    DATA_INFO_KEYS,
    DataError,
    DataInfo,
    clip_starts,
    flip_path,
    load_preload,
)
from ditto_training.trainer import checkpoint_epoch, evaluate, prune_checkpoints
from tests.training.synthetic_videos import write_talking_video

SECONDS = 3.6           # 90 frames: the 81 a clip needs plus a few starts
EPOCHS = 6
BATCH = 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    videos = root / "videos"
    write_talking_video(videos / "alice.mp4", SECONDS, seed=1)
    write_talking_video(videos / "bob.mp4", SECONDS, seed=2, audio_rate=16000)
    (videos / "broken.mp4").write_bytes(b"not a video at all")
    work = root / "work"
    paths = {"root": root, "videos": videos, "work": work, "info": work / "data_info.json",
             "list": work / "data_list.json", "preload": work / "data_preload.pkl"}
    rc = ditto(["prepare", "--videos", str(videos), "--work", str(work), "--data-info", str(paths["info"]),
                "--out-list", str(paths["list"]), "--out-preload", str(paths["preload"]), "--weights", "synthetic",
                "--profile", "tiny", "--no-progress", "--device", "cpu"])
    paths["rc"] = Path(str(rc))
    return paths


def _report(data) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads((data["work"] / "data_list.report.json").read_text())}


def test_prepare_reports_the_broken_video_and_lists_the_good_ones(data):
    assert str(data["rc"]) == "1"                                 # one failure -> non-zero exit
    report = _report(data)
    assert report["broken"]["status"] == "failed"
    assert "not a readable video" in report["broken"]["reason"]
    assert {report[n]["status"] for n in ("alice", "bob")} == {"done"}
    info = json.loads(data["info"].read_text())
    assert set(info) == set(DATA_INFO_KEYS)
    assert [Path(p).stem for p in info["fps25_video_list"]] == ["alice", "bob", "broken"]
    items = json.loads(data["list"].read_text())
    assert len(items) == 4                                        # two videos, each with its mirrored copy
    assert [Path(i["mtn"]).parent.name for i in items] == ["LP_npy", "LP_npy", "LP_npy_flip", "LP_npy_flip"]
    assert all(i["aud"] == items[k % 2]["aud"] for k, i in enumerate(items))  # audio is not flipped
    assert all(i["frame_num"] >= 81 and set(i) >= {"mtn", "aud", "emo", "eye_open", "eye_ball"} for i in items)


def test_prepared_files_have_the_reference_formats(data):
    work = data["work"]
    n = int(SECONDS * 25)
    with open(work / "LP_pkl" / "alice.pkl", "rb") as f:
        infos = pickle.load(f)
    assert len(infos) == n
    assert {k: v.shape for k, v in infos[0].items()} == {
        "pitch": (1, 66), "yaw": (1, 66), "roll": (1, 66), "t": (1, 3), "exp": (1, 21, 3), "scale": (1, 1),
        "kp": (1, 21, 3)}
    lp = np.load(work / "LP_npy" / "alice.npy")
    assert lp.shape == (n, 328)
    np.testing.assert_allclose(lp[3, 0], infos[3]["scale"][0, 0] - 1, rtol=1e-6)
    np.testing.assert_allclose(lp[3, 202:265], infos[3]["exp"].reshape(-1), rtol=1e-6)
    flipped = np.load(flip_path(work / "LP_npy" / "alice.npy"))
    assert flipped.shape == lp.shape and not np.allclose(flipped, lp)  # the mirrored face moves differently
    assert np.load(work / "eye_ball_npy" / "alice.npy").shape == (n, 3, 2)
    assert np.load(work / "eye_open_npy" / "alice.npy").shape == (n, 2)
    emo = np.load(work / "emo_npy" / "alice.npy")
    assert emo.shape == (n, 8) and np.allclose(emo.sum(1), 1, atol=1e-4)
    aud = np.load(work / "hubert_aud_npy" / "alice.npy")
    assert aud.shape[1] == 1024 and abs(len(aud) - n) <= 6
    import av

    with av.open(str(work / "video" / "alice.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.width, s.codec_context.height, float(s.average_rate)) == (512, 512, 25.0)
    v_list, idx_map = load_preload(data["preload"])
    assert len(v_list) == 4
    assert {k: np.asarray(v).shape[1:] for k, v in v_list[0].items() if k != "frame_num"} == {
        "mtn": (265,), "aud": (1024,), "sc": (63,), "emo": (8,), "eye_open": (2,), "eye_ball": (6,)}
    assert idx_map[0] == [0, 1]
    assert sum(1 for i in idx_map if i[0] == 0) == len(clip_starts(v_list[0]["frame_num"]))
    np.testing.assert_array_equal(v_list[0]["sc"], lp[:v_list[0]["frame_num"], 265:])


def test_prepare_resumes_and_skips_finished_videos(data):
    before = (data["work"] / "LP_npy" / "alice.npy").stat().st_mtime_ns
    (data["work"] / "emo_npy" / "bob.npy").unlink()              # as if interrupted before the last file
    rc = ditto(["prepare", "--data-info", str(data["info"]), "--out-list", str(data["list"]), "--weights",
                "synthetic", "--profile", "tiny", "--no-progress", "--device", "cpu"])
    assert rc == 1                                                # the broken video still fails, with its reason
    report = _report(data)
    assert report["alice"]["status"] == "skipped" and report["bob"]["status"] == "done"
    assert (data["work"] / "emo_npy" / "bob.npy").is_file()
    assert (data["work"] / "LP_npy" / "alice.npy").stat().st_mtime_ns == before


def _steps_per_epoch(data) -> int:
    return -(-len(load_preload(data["preload"])[1]) // BATCH)


@pytest.fixture(scope="module")
def trained(data) -> Path:
    run = data["root"] / "runs"
    rc = ditto(["train", "--use_sc", "--use_last_frame", "--use_last_frame_loss", "--use_emo", "--use_eye_open",
                "--use_eye_ball", "--audio_feat_dim", "1103", "--motion_feat_dim", "265", "--batch_size", str(BATCH),
                "--epochs", str(EPOCHS), "--save_ckpt_freq", "2", "--data_preload", "--data_preload_pkl",
                str(data["preload"]), "--experiment_dir", str(run), "--experiment_name", "tiny", "--profile", "tiny",
                "--lr", "1e-3", "--device", "cpu", "--no_progress"])
    assert rc == 0
    return run / "tiny"


def test_training_lowers_the_loss_and_writes_checkpoints_logs_and_plot(trained, data):
    from ditto_training.dataset import ClipDataset, DatasetFlags
    from ditto_training.losses import LossSettings
    from services.motion_generator.dit import MotionDecoder, MotionDiTConfig
    from services.motion_generator.models import load_motion_decoder

    ckpts = sorted((p for p in trained.glob("ckpts/train_*.pt") if checkpoint_epoch(p)),
                   key=lambda p: checkpoint_epoch(p) or -1)
    assert [p.name for p in ckpts] == [f"train_{e}.pt" for e in range(1, EPOCHS + 1)]
    assert set(torch.load(ckpts[-1], weights_only=True)) == {"model_state_dict"}
    steps = [json.loads(line)["loss"] for line in (trained / "loss_steps.jsonl").read_text().splitlines()]
    assert len(steps) == EPOCHS * _steps_per_epoch(data)
    assert np.mean(steps[-5:]) < 0.5 * np.mean(steps[:3])
    log = (trained / "loss.log").read_text().splitlines()
    assert len(log) == EPOCHS and all(f"{k}_exp=" in log[0] for k in "PVAL")
    svg = (trained / "loss.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<path") >= 4
    ds = ClipDataset.from_preload(str(data["preload"]), DatasetFlags())
    settings = LossSettings()
    torch.manual_seed(0)
    untrained = evaluate(MotionDecoder(MotionDiTConfig.tiny()), ds, settings)
    first, last = (evaluate(load_motion_decoder(ckpts[i], "tiny"), ds, settings) for i in (0, -1))
    assert last < first < untrained


def test_checkpoint_drives_the_motion_stage(trained, data):
    from services.motion_generator.generator import AvatarMotion, MotionGenerator, SessionSettings
    from services.motion_generator.models import open_backend

    with open(data["work"] / "LP_pkl" / "bob.pkl", "rb") as f:
        frame0 = pickle.load(f)[0]
    arrays = {k: v.reshape(1, -1) for k, v in frame0.items()}
    arrays["eye_open"] = np.load(data["work"] / "eye_open_npy" / "bob.npy")[:1]
    arrays["eye_ball"] = np.load(data["work"] / "eye_ball_npy" / "bob.npy")[:1].reshape(1, 6)
    avatar = AvatarMotion.from_arrays(arrays)
    features = np.load(data["work"] / "hubert_aud_npy" / "bob.npy")[:60]
    settings = SessionSettings(steps=4, overlap=10, blink_interval_s=0)
    mtn = np.load(data["work"] / "LP_npy" / "bob.npy")[:, :265]
    errors = {}
    for name, weights in (("trained", trained / "ckpts" / f"train_{EPOCHS}.pt"), ("untrained", "synthetic")):
        out = MotionGenerator(open_backend(weights, "tiny")).offline(avatar, features, settings)
        assert out.motion.shape == (60, 265) and np.isfinite(out.motion).all()
        assert out.x_d.shape == (60, 21, 3) and np.isfinite(out.x_d).all()
        errors[name] = float(np.abs(out.motion - mtn.mean(0)).mean())
    assert errors["trained"] < errors["untrained"]                 # it learned what these faces' motion looks like


def test_resume_continues_the_step_count_and_optimizer(trained, data):
    end = EPOCHS * _steps_per_epoch(data) + 3
    rc = ditto(["train", "--use_sc", "--use_last_frame", "--use_last_frame_loss", "--use_emo", "--use_eye_open",
                "--use_eye_ball", "--batch_size", str(BATCH), "--epochs", str(EPOCHS + 1), "--save_ckpt_freq", "2",
                "--data_preload", "--data_preload_pkl", str(data["preload"]), "--experiment_dir", str(trained.parent),
                "--experiment_name", "tiny", "--profile", "tiny", "--lr", "1e-3", "--device", "cpu", "--no_progress",
                "--resume", str(trained / "ckpts" / f"train_{EPOCHS}.pt"), "--max_steps", str(end)])
    assert rc == 0
    steps = [json.loads(line) for line in (trained / "loss_steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps[-3:]] == [end - 2, end - 1, end] and steps[-1]["epoch"] == EPOCHS + 1
    state = torch.load(trained / "ckpts" / f"train_{EPOCHS + 1}.state.pt", weights_only=True)
    assert state["step"] == end and state["optimizer"]["state"]        # Adan moments carried over and saved


def test_export_to_onnx_serves_the_motion_stage(trained, tmp_path):
    from services.motion_generator.generator import MotionGenerator
    from services.motion_generator.models import OnnxBackend

    out = tmp_path / "lmdm.onnx"
    assert ditto(["train", "--export", str(trained / "ckpts" / f"train_{EPOCHS}.pt"), "--onnx", str(out),
                  "--profile", "tiny"]) == 0
    from ditto_training.export import export_checkpoint

    _, err = export_checkpoint(trained / "ckpts" / f"train_{EPOCHS}.pt", tmp_path / "again.onnx", "tiny")
    assert err < 1e-4
    gen = MotionGenerator(OnnxBackend(out, "tiny"))
    rng = np.random.default_rng(0)
    motion = gen.sample(rng.standard_normal((1, 265)).astype(np.float32),
                        rng.standard_normal((1, 80, 1103)).astype(np.float32), 2, 1.0,
                        rng.standard_normal((1, 80, 265)).astype(np.float32),
                        rng.standard_normal((1, 1, 80, 265)).astype(np.float32))
    assert motion.shape == (1, 80, 265) and np.isfinite(motion).all()


def test_bad_inputs_get_clear_errors(data, tmp_path, capsys):
    bad = tmp_path / "info.json"
    bad.write_text(json.dumps({"fps25_video_list": []}))
    with pytest.raises(DataError, match="missing keys"):
        DataInfo.load(bad)
    rc = ditto(["train", "--use_sc", "--audio_feat_dim", "1103", "--data_preload", "--data_preload_pkl",
                str(data["preload"]), "--experiment_dir", str(tmp_path), "--profile", "tiny", "--no_progress"])
    assert rc == 2 and "does not match the enabled conditions" in capsys.readouterr().out
    assert ditto(["train", "--export", str(tmp_path / "missing.pt"), "--onnx", str(tmp_path / "x.onnx"),
                  "--profile", "tiny"]) == 2


def test_checkpoint_pruning_keeps_milestones_and_the_last_five(tmp_path):
    for e in range(1, 13):
        (tmp_path / f"train_{e}.pt").write_bytes(b"")
        (tmp_path / f"train_{e}.state.pt").write_bytes(b"")
    prune_checkpoints(tmp_path, save_ckpt_freq=4)
    kept = sorted(checkpoint_epoch(p) or 0 for p in tmp_path.glob("train_*.pt") if ".state" not in p.name)
    assert kept == [4, 6, 7, 8, 9, 10, 11, 12]
    assert not (tmp_path / "train_5.state.pt").exists() and (tmp_path / "train_6.state.pt").exists()


@pytest.mark.gpu
def test_tensorrt_engine_from_a_trained_checkpoint(trained, tmp_path):
    pytest.importorskip("tensorrt")
    from ditto_training.export import build_tensorrt, export_checkpoint

    onnx_path, _ = export_checkpoint(trained / "ckpts" / f"train_{EPOCHS}.pt", tmp_path / "m.onnx", "tiny", check=False)
    engine = build_tensorrt(onnx_path, tmp_path / "m.engine", max_batch=4)
    assert engine.stat().st_size > 0


class _LidMesh:
    """A plug-in mesh provider: a flat 478-point template whose lids open with the brightness of the crop's eye
    band (the drawn eyes are dark when open); every 7th frame it reports no face."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, crop: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        if self.calls % 7 == 0:
            return None
        pts = np.zeros((478, 3), np.float32)
        s = crop.shape[0]
        band = crop[int(0.40 * s):int(0.46 * s), int(0.35 * s):int(0.65 * s)].mean() / 255.0
        for outer, inner, lids, iris, x0 in ((33, 133, ((145, 159), (144, 160), (153, 158)), 468, 0.3),
                                             (263, 362, ((374, 386), (373, 387), (380, 385)), 473, 0.6)):
            pts[outer, :2], pts[inner, :2], pts[iris, :2] = (x0, 0.4), (x0 + 0.1, 0.4), (x0 + 0.05, 0.4)
            for k, (lo, up) in enumerate(lids):
                pts[lo, :2] = (x0 + 0.025 * (k + 1), 0.4 + 0.1 * (1 - band))
                pts[up, :2] = (x0 + 0.025 * (k + 1), 0.4)
        return pts


class _MouthEmotion:
    """A plug-in classifier: 'Happy' in proportion to how dark the mouth region is."""

    name = "mouth"

    def __call__(self, faces):
        from services.motion_generator.condition import label_probs

        out = []
        for f in faces:
            dark = 1 - f[int(0.6 * len(f)):, :].mean() / 255.0
            out.append(dark * label_probs([3]) + (1 - dark) * label_probs([4]))
        return np.stack(out).astype(np.float32)


def test_mesh_and_emotion_providers_plug_in(data, tmp_path):
    from ditto_app.synthetic import resolve_weights
    from ditto_training.extractors import Extractors
    from ditto_training.prepare import PrepareSettings, is_prepared, prepare_video

    mesh = _LidMesh()
    ex = Extractors.load(resolve_weights("synthetic", "tiny"), "tiny", "cpu", emotion="neutral", mesh=mesh)
    ex.emotion = _MouthEmotion()
    info = DataInfo.for_videos([data["videos"] / "alice.mp4"], tmp_path)
    v = info.videos[0]
    res = prepare_video(v, ex, PrepareSettings())
    assert res.status == "done", res.reason
    assert is_prepared(v, flip=True, with_mesh=True)
    n = int(SECONDS * 25)
    lmk = np.load(v["MP_lmk_npy_list"])
    assert lmk.shape == (n, 478, 3) and np.load(v.flipped("MP_lmk_npy_list")).shape == (n, 478, 3)
    assert any("nearest measured frame" in note for note in res.notes)
    eye_open = np.load(v["eye_open_npy_list"])
    assert eye_open.std() > 0 and np.isfinite(eye_open).all()          # measured, not the neutral constant
    emo = np.load(v["emo_npy_list"])
    assert emo.shape == (n, 8) and emo[:, 3].std() > 0                  # 'Happy' follows the mouth
    assert mesh.calls == 2 * n                                          # normal and mirrored frames
