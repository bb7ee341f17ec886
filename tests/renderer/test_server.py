"""The Renderer gRPC service on loopback with the tiny networks: registration, streaming render with each
encoding, and clear status codes for bad input while the server keeps serving."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ditto import codec, rpc
from ditto_client.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc
from services.renderer.avatar.register import MOTION_KEYS
from services.renderer.core import RendererCore
from services.renderer.server import serve
from tests.renderer.renderer_models import face_image, tiny_models


def png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


@pytest.fixture
async def server(tmp_path):
    running = await serve(RendererCore(tiny_models(), cache_dir=tmp_path / "avatars"))
    channel = grpc.aio.insecure_channel(running.address, options=rpc.channel_options())
    yield renderer_pb2_grpc.RendererStub(channel), channel
    await channel.close()
    await running.stop(0)


def keypoints(info: dict[str, np.ndarray], n: int, first: int = 0, jitter: float = 0.0) -> common_pb2.KeypointFrames:
    from ditto.keypoints import transform_keypoints

    x_s = transform_keypoints({k: info[k][:1] for k in MOTION_KEYS}).astype(np.float32)  # [1, 21, 3]
    x_s = np.repeat(x_s, n, axis=0)
    x_d = x_s + jitter * np.arange(n, dtype=np.float32)[:, None, None]
    return common_pb2.KeypointFrames(first_frame=first, x_source=codec.to_proto(x_s), x_driving=codec.to_proto(x_d))


async def register(stub, img=None) -> renderer_pb2.RegisterSourceResponse:
    return await stub.RegisterAvatar(renderer_pb2.RegisterSourceRequest(media=png(face_image() if img is None
                                                                                  else img), filename="a.png"))


def stream(*events):
    async def gen():
        for e in events:
            yield e
    return gen()


def cfg(avatar_id: str, **output) -> renderer_pb2.RenderFramesRequest:
    return renderer_pb2.RenderFramesRequest(config=renderer_pb2.RenderConfig(
        avatar_id=avatar_id, output=common_pb2.OutputOptions(paste_back=output.pop("paste_back", True), **output)))


def kp_req(kp) -> renderer_pb2.RenderFramesRequest:
    return renderer_pb2.RenderFramesRequest(keypoints=kp)


END = renderer_pb2.RenderFramesRequest(end=common_pb2.EndOfStream())


async def test_register_and_render_raw_and_h264(server):
    stub, channel = server
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="ditto.v1.Renderer"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    reg = await register(stub)
    assert reg.avatar_id and (reg.width, reg.height, reg.source_frames) == (320, 240, 1)
    assert not reg.already_registered
    info = codec.unnamed(reg.motion_info.tensors)
    assert set(info) == {*MOTION_KEYS, "eye_open", "eye_ball"} and info["kp"].shape == (1, 63)
    assert (await register(stub)).already_registered

    out = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id, encoding=common_pb2.FRAME_ENCODING_RAW_RGB),
                                                     kp_req(keypoints(info, 3, jitter=0.02)), END))]
    frames, final = out[:-1], out[-1]
    assert final.WhichOneof("event") == "final" and final.final.code == 0
    assert [f.frame.index for f in frames] == [0, 1, 2]
    imgs = [np.frombuffer(f.frame.data, np.uint8).reshape(240, 320, 3) for f in frames]
    src = face_image()
    assert np.array_equal(imgs[0][:, :30], src[:, :30])  # left of the pasted square (x 40..280): the source
    assert not np.array_equal(imgs[0], src)         # inside: the render
    assert not np.array_equal(imgs[0], imgs[2])     # other driving keypoints, other pictures

    h264 = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id, encoding=common_pb2.FRAME_ENCODING_H264),
                                                      kp_req(keypoints(info, 4)), END))]
    import av

    dec = av.CodecContext.create("h264", "r")
    decoded = []
    for r in h264[:-1]:
        decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(av.Packet(r.frame.data))]
    decoded += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
    assert len(decoded) == 4 and decoded[0].shape == (240, 320, 3)
    assert np.abs(decoded[0].astype(int) - imgs[0]).mean() < 6  # same picture as the raw path (x_d = x_s)


async def test_crop_output_and_jpeg(server):
    stub, _ = server
    reg = await register(stub)
    info = codec.unnamed(reg.motion_info.tensors)
    out = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id, paste_back=False,
                                                         background=common_pb2.BACKGROUND_TRANSPARENT),
                                                     kp_req(keypoints(info, 1)), END))]
    f = out[0].frame
    assert (f.width, f.height, f.encoding) == (512, 512, common_pb2.FRAME_ENCODING_JPEG)
    rgba = cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (512, 512, 4) and rgba[0, 0, 3] == 0 and rgba[256, 256, 3] == 255


async def test_bad_requests_get_clear_status_and_server_survives(server):
    stub, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RegisterAvatar(renderer_pb2.RegisterSourceRequest(media=b"garbage" * 50, filename="x.mov"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "video" in err.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in stub.RenderFrames(stream(cfg("nope"), END))]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "RegisterAvatar" in err.value.details()

    reg = await register(stub)
    info = codec.unnamed(reg.motion_info.tensors)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in stub.RenderFrames(stream(kp_req(keypoints(info, 1)), END))]
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "RenderConfig" in err.value.details()

    bad = keypoints(info, 2)
    bad.x_driving.CopyFrom(codec.to_proto(np.zeros((2, 20, 3), np.float32)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id), kp_req(bad), END))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "[n, 21, 3]" in err.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in stub.RenderFrames(stream(
            cfg(reg.avatar_id, encoding=common_pb2.FRAME_ENCODING_H264, background=common_pb2.BACKGROUND_TRANSPARENT),
            END))]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alpha" in err.value.details()

    # still serving
    ok = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id), kp_req(keypoints(info, 1)), END))]
    assert ok[-1].final.code == 0 and len(ok) == 2


async def test_a_refusal_reaches_a_client_that_is_still_sending(server):
    """grpc.aio reports INTERNAL instead of the server's status when the client's write fails because the call has
    ended (grpc/grpc#36066); the server lets the client finish its stream first, so the real status arrives."""
    stub, _ = server
    reg = await register(stub)
    kp = kp_req(keypoints(codec.unnamed(reg.motion_info.tensors), 1))
    for _ in range(20):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [r async for r in stub.RenderFrames(stream(cfg("nope"), *[kp] * 200, END))]
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


async def test_a_client_that_never_stops_sending_still_gets_its_status_and_others_are_served(server):
    """The wait for the client's half-close is bounded (rpc.DRAIN_S): a client that keeps its stream open gets its
    status anyway, and meanwhile other calls are served."""
    import asyncio

    stub, _ = server
    reg = await register(stub)
    kp = kp_req(keypoints(codec.unnamed(reg.motion_info.tensors), 1))
    never = asyncio.Event()

    async def open_forever():
        yield cfg("nope")
        await never.wait()

    call = stub.RenderFrames(open_forever())
    ok = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id), kp, END))]  # served meanwhile
    assert ok[-1].final.code == 0
    assert await asyncio.wait_for(call.code(), rpc.DRAIN_S + 30) == grpc.StatusCode.NOT_FOUND
    never.set()


def test_the_core_keeps_the_most_recently_used_avatars_within_its_memory():
    from services.renderer.avatar.crop import CropSettings

    first, _ = RendererCore(tiny_models()).register(png(face_image(seed=1)), "a.png", CropSettings())
    size = first.nbytes
    assert size >= sum(f.nbytes for f in first.frames) + sum(f.numel() * f.element_size() for f in first.f_s)
    core = RendererCore(tiny_models(), max_avatar_bytes=int(2.5 * size))  # no cache folder: an evicted one is gone
    ids = [core.register(png(face_image(seed=s)), "a.png", CropSettings())[0].avatar_id for s in (1, 2)]
    assert core.avatar(ids[0]) is not None                     # now the most recently used
    third = core.register(png(face_image(seed=3)), "a.png", CropSettings())[0].avatar_id
    assert len({*ids, third}) == 3
    assert core.avatar(ids[1]) is None                         # the least recently used went
    assert core.avatar(ids[0]) is not None and core.avatar(third) is not None
    assert core._avatars.currsize <= core.max_avatar_bytes


async def test_an_avatar_larger_than_the_renderers_avatar_memory_is_refused_and_others_are_served(tmp_path):
    core = RendererCore(tiny_models(), cache_dir=tmp_path / "avatars")
    running = await serve(core)
    try:
        async with grpc.aio.insecure_channel(running.address, options=rpc.channel_options()) as channel:
            stub = renderer_pb2_grpc.RendererStub(channel)
            reg = await register(stub)
            core.max_avatar_bytes = core.avatar(reg.avatar_id).nbytes  # room for this one, not a larger one
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await register(stub, face_image(480, 640, seed=7))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "DITTO_MEDIA__MAX_AVATAR_MEMORY_MB" in err.value.details()
            info = codec.unnamed(reg.motion_info.tensors)
            ok = [r async for r in stub.RenderFrames(stream(cfg(reg.avatar_id), kp_req(keypoints(info, 1)), END))]
            assert ok[-1].final.code == 0
    finally:
        await running.stop(0)


def test_paste_back_cache_is_bounded_in_bytes_and_small_per_entry():
    from services.renderer.putback import PutBack

    # a source frame's entry holds vectors along the box's sides, not a map per pixel: a 4K frame with a face
    # 2000 px high stays within kilobytes
    pb = PutBack()
    grid = pb.grid(np.array([[4.0, 0, 800], [0, 4.0, 100]], np.float32), 3840, 2160)
    assert grid.box[1] - grid.box[0] > 2000 and grid.nbytes < 40 << 10
    small = PutBack(cache_bytes=3 * (pb.grid(np.array([[2.0, 0, 0], [0, 2.0, 0]], np.float32), 640, 480).nbytes + 256))
    for shift in range(50):
        small.grid(np.array([[2.0, 0, shift], [0, 2.0, 0]], np.float32), 640, 480)
    assert len(small._grids) == 3 and small._grids.currsize <= small._grids.maxsize
