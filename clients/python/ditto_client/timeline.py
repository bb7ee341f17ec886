"""The speech/frame timeline of one Converse session, for a client that sends all of the session's audio itself.

The service makes one video frame per 40 ms of a session's audio: 25 fps, 640 samples at 16 kHz. A client that sends
every sample of a session (its speech, and silence in between; the WebRTC gateway and the voice-agent bridge do, with
the FREEZE idle policy or by never leaving a gap the server would fill) can tell which of its samples each frame shows,
and hand out every frame together with the speech that drove it. `SpeechTimeline` keeps that account:

- Up. Speech comes in at any rate and channel count and is resampled to 16 kHz mono (`push`); silence fills the
  timeline while there is nothing to say (`add_silence`); the 16 kHz audio leaves in chunks (`take_chunk`). The
  original speech is kept, as it came, until the frames that show it are placed.
- Epochs. `interrupt()` begins a new epoch: nothing received so far will be shown, and the epoch's sample 0 is the
  next one received. The service answers with the index its frames start from (`interrupted`), and first sends
  frames easing the face back to rest. Those are marked `idle`, come before the epoch's first frame of speech and
  show none of the client's audio; how many there are is the service's to say, so they are counted as they come.
  Frames of an epoch the client has interrupted may still arrive: they are dropped.
- Down. `place(frame)` says where a frame sits: the 16 kHz samples it shows and the original speech under them, with
  the utterances that end there. Frame k of an epoch (rest frames aside) shows its samples [k*640, (k+1)*640).

`FrameDecoder` turns frames (JPEG or raw RGB) into pictures. Both need PyAV and numpy (`pip install
'ditto-client[media]'`), imported only where speech is resampled or a picture decoded: the rest is plain Python.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import av
    import numpy as np

    from ditto_client.v1 import avatar_pb2

FPS = 25                                # video frames per second of audio
FRAME_S = 1 / FPS                       # 40 ms of audio per frame
SESSION_RATE = 16000                    # what the service reads (HuBERT's rate): sent at it, never resampled there
FRAME_SAMPLES = SESSION_RATE // FPS     # 640 samples of 16 kHz audio per frame


def first_sample_of_frame(frame: int) -> int:
    """The first 16 kHz sample (of an epoch) that this frame (of the same epoch) shows."""
    return frame * FRAME_SAMPLES


@dataclass(frozen=True)
class Speech:
    """A piece of the original speech under a frame: PCM16 interleaved, at the rate and channel count it came in,
    beginning `offset` 16 kHz samples into the frame's 40 ms."""

    offset: int
    pcm: bytes
    rate: int
    channels: int


@dataclass(frozen=True)
class Placement:
    """Where one frame of the service sits on the client's timeline."""

    frame: avatar_pb2.VideoFrame
    start: int | None            # the first 16 kHz sample it shows, over the session; None: it eases back to rest
    speech: tuple[Speech, ...]   # the original speech it shows, in order (none for silence or rest)
    ended: int                   # utterances whose last piece of speech is in `speech`

    @property
    def at_rest(self) -> bool:
        return self.start is None


class _Resampler:
    """One utterance's speech, PCM16 interleaved at its own rate and channel count -> 16 kHz mono PCM16, as it
    streams (the few samples the filter holds come out at `flush`)."""

    def __init__(self, rate: int, channels: int) -> None:
        self.channels = channels
        self.rate = rate
        self._av: Any = None
        if rate != SESSION_RATE:
            import av

            self._av = av.AudioResampler(format="s16", layout="mono", rate=SESSION_RATE)

    def __call__(self, pcm: bytes) -> bytes:
        if self.channels == 1 and self._av is None:
            return pcm
        import numpy as np

        samples = np.frombuffer(pcm, "<i2")
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1).astype(np.int16)
        if self._av is None:
            return samples.astype("<i2", copy=False).tobytes()
        import av

        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        return self._out(self._av.resample(frame))

    def flush(self) -> bytes:
        return self._out(self._av.resample(None)) if self._av is not None else b""

    @staticmethod
    def _out(frames: list[av.AudioFrame]) -> bytes:
        return b"".join(f.to_ndarray().astype("<i2", copy=False).tobytes() for f in frames)


@dataclass
class _Utterance:
    """Speech on the timeline, kept until the frames showing it are placed."""

    start: int                 # session sample (16 kHz) where it begins
    rate: int
    channels: int
    resample: _Resampler
    pcm: bytearray = field(default_factory=bytearray)  # original audio not handed out yet
    dropped: int = 0           # original sample frames handed out (cut from the front of pcm)
    length: int = 0            # 16 kHz samples it has on the timeline so far
    ended: bool = False        # complete: nothing more of it will come
    continued: bool = False    # ended only to change rate or channel count: the next piece goes on with it

    @property
    def end(self) -> int:
        return self.start + self.length

    def original_at(self, position: int) -> int:
        """The original sample frame that plays at session sample `position` (floor, so spans tile exactly)."""
        return (position - self.start) * self.rate // SESSION_RATE


class SpeechTimeline:
    """One session's audio timeline as the client sends it, and where each frame the service sends back sits on it.
    Positions are 16 kHz samples counted from the session's start."""

    def __init__(self) -> None:
        self.epoch = 0
        self.received = 0          # samples put on the timeline (speech and silence), sent or not
        self.shown = 0             # end of the last frame of speech placed (or the epoch's start)
        self.frames_dropped = 0    # frames of interrupted epochs, which arrived after the interrupt
        self._out = bytearray()    # 16 kHz PCM16 not taken by take_chunk yet
        self._epoch_start = 0
        self._base: dict[int, int] = {0: 0}  # epoch -> the frame index it starts from
        self._rest = 0             # frames of the current epoch easing back to rest
        self._speech_placed = False
        self._utterances: deque[_Utterance] = deque()
        self._open: _Utterance | None = None

    # ---- up ----
    @property
    def sent(self) -> int:
        """Samples taken out by take_chunk so far."""
        return self.received - len(self._out) // 2

    @property
    def ahead_s(self) -> float:
        """Audio of this epoch received but not yet shown by a frame (waiting here, in flight, or at the service)."""
        return (self.received - self.shown) / SESSION_RATE

    @property
    def speaking(self) -> bool:
        """Some speech received has not been handed out with its frames yet."""
        return bool(self._utterances)

    @property
    def in_utterance(self) -> bool:
        """An utterance is in progress: more of it may come (`end_speech` completes it)."""
        return self._open is not None

    def push(self, pcm: bytes, rate: int, channels: int = 1) -> None:
        """Speech: PCM16 interleaved, any rate and channel count, any length. It continues the utterance in progress
        (also across a change of rate or channel count)."""
        usable = len(pcm) - len(pcm) % (2 * channels)
        if not usable:
            return
        u = self._open
        if u is not None and (u.rate != rate or u.channels != channels):
            self._close(u)
            u.continued = True
            u = None
        if u is None:
            u = self._open = _Utterance(self.received, rate, channels, _Resampler(rate, channels))
            self._utterances.append(u)
        u.pcm += pcm[:usable]
        self._append(u.resample(bytes(pcm[:usable])), u)

    def end_speech(self) -> bool:
        """The utterance in progress is complete: the frame that shows its last sample reports it `ended`. True when
        no frame will (no utterance was in progress, or it had nothing to show): the caller says so itself."""
        u = self._open
        if u is None:
            return True
        self._close(u)
        if u.length == 0:
            self._utterances.remove(u)
            return True
        return False

    def _close(self, u: _Utterance) -> None:
        self._open = None
        self._append(u.resample.flush(), u)
        u.ended = True

    def add_silence(self, samples: int) -> None:
        """Keep the timeline going while there is nothing to say (ends the utterance in progress)."""
        self.end_speech()
        self._append(bytes(2 * samples), None)

    def take_chunk(self, max_samples: int, min_samples: int = 1) -> bytes | None:
        """The next 16 kHz PCM16 to send, at most `max_samples`; None until `min_samples` are waiting."""
        if len(self._out) < 2 * max(1, min_samples):
            return None
        chunk = bytes(self._out[:2 * max_samples])
        del self._out[:len(chunk)]
        return chunk

    def _append(self, pcm16k: bytes, utterance: _Utterance | None) -> None:
        self._out += pcm16k
        self.received += len(pcm16k) // 2
        if utterance is not None:
            utterance.length += len(pcm16k) // 2

    # ---- epochs ----
    def interrupt(self) -> None:
        """What was received so far will not be shown (audio not sent yet is dropped too); the next epoch begins
        with the next sample received."""
        self.received = self.sent
        self._out.clear()
        self._utterances.clear()
        self._open = None
        self.epoch += 1
        self._epoch_start = self.shown = self.received
        self._rest = 0
        self._speech_placed = False

    def interrupted(self, event: avatar_pb2.InterruptedEvent) -> None:
        """The service's answer to an interrupt: where the new epoch's frames begin."""
        self._base[event.new_epoch] = event.last_frame_index + 1

    # ---- down ----
    def place(self, frame: avatar_pb2.VideoFrame) -> Placement | None:
        """Where this frame sits, and the speech it shows (handed out once: later frames never get it again); None
        for a frame of an interrupted epoch (drop it)."""
        if frame.epoch != self.epoch:
            self.frames_dropped += 1
            return None
        base = self._base.setdefault(frame.epoch, frame.index)
        if frame.epoch > 0 and frame.idle and not self._speech_placed:
            self._rest += 1
            return Placement(frame, None, (), 0)
        self._speech_placed = True
        start = self._epoch_start + first_sample_of_frame(frame.index - base - self._rest)
        end = start + FRAME_SAMPLES
        self.shown = max(self.shown, end)
        speech, ended = self._take(start, end)
        return Placement(frame, start, speech, ended)

    def _take(self, t0: int, t1: int) -> tuple[tuple[Speech, ...], int]:
        """The original speech under samples [t0, t1) (all of an utterance's rest once t1 passes its end), and how
        many utterances end in it."""
        out: list[Speech] = []
        ended = 0
        while self._utterances:
            u = self._utterances[0]
            if u.start >= t1:
                break
            lo, hi = max(t0, u.start), min(t1, u.end)
            a = max(u.original_at(lo), u.dropped)
            finished = u.ended and t1 >= u.end
            frame_bytes = 2 * u.channels
            total = u.dropped + len(u.pcm) // frame_bytes
            b = total if finished else min(max(u.original_at(hi), a), total)
            if b > a:
                skip, cut = (a - u.dropped) * frame_bytes, (b - u.dropped) * frame_bytes
                out.append(Speech(max(0, lo - t0), bytes(u.pcm[skip:cut]), u.rate, u.channels))
                del u.pcm[:cut]
                u.dropped = b
            if not finished:
                break
            self._utterances.popleft()
            ended += not u.continued
        return tuple(out), ended

    def unshown(self) -> list[tuple[bytes, int, int, bool]]:
        """Give up on showing what is received: the original speech not handed out yet, as (pcm, rate, channels,
        ended) per utterance, so a client that loses its frames can still play it."""
        left = [(bytes(u.pcm), u.rate, u.channels, u.ended and not u.continued) for u in self._utterances]
        self._utterances.clear()
        self._open = None
        return left


class FrameDecoder:
    """The pictures of one session's frames, JPEG or raw RGB (one decoder per session: it keeps its context).
    Raises ValueError for a frame that does not decode."""

    def __init__(self) -> None:
        import av

        self._jpeg = av.CodecContext.create("mjpeg", "r")

    def video_frame(self, frame: avatar_pb2.VideoFrame) -> av.VideoFrame:
        import av

        from ditto_client.v1 import common_pb2

        if frame.encoding == common_pb2.FRAME_ENCODING_RAW_RGB:
            return av.VideoFrame.from_ndarray(self._raw(frame), format="rgb24")
        try:
            decoded = self._jpeg.decode(av.Packet(frame.data))
        except av.FFmpegError as err:
            raise ValueError(f"frame {frame.index} did not decode: {err}") from None
        if not decoded:
            raise ValueError(f"frame {frame.index} did not decode")
        return decoded[0]

    def rgb(self, frame: avatar_pb2.VideoFrame) -> np.ndarray:
        """height x width x 3, RGB."""
        from ditto_client.v1 import common_pb2

        if frame.encoding == common_pb2.FRAME_ENCODING_RAW_RGB:
            return self._raw(frame)
        return self.video_frame(frame).to_ndarray(format="rgb24")

    @staticmethod
    def _raw(frame: avatar_pb2.VideoFrame) -> np.ndarray:
        import numpy as np

        if len(frame.data) != frame.width * frame.height * 3:
            raise ValueError(f"frame {frame.index}: {len(frame.data)} bytes are not {frame.width}x{frame.height} RGB")
        return np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
