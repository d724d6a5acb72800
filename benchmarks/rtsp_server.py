"""A camera on loopback: an RTSP server (GStreamer's gst-rtsp-server) streaming a video file in real time.

Run by the *system* Python, whose GObject bindings (``python3-gi``, ``gir1.2-gst-rtsp-server-1.0``)
the virtual environment does not have; so this script imports nothing but the standard library and
``gi``. ``benchmarks.camera`` starts it as a subprocess (``rtsp_source``)::

    /usr/bin/python3 benchmarks/rtsp_server.py VIDEO --port 8554 [--path /camera] [--fps 10] [--loop]

It behaves like a network camera rather than a file server. A *producer* pipeline decodes the file at
its real-time rate (looping it if asked) into an in-process video channel (``intervideosink``); every
RTSP client is served from that channel (``intervideosrc``, a live source), so a client that connects
gets the current picture at once, not the file's first frame, and several clients share one media. The
codec is MJPEG over RTP (every frame a key frame, so a late client decodes its first packet) or H.264
(``openh264enc``, a key frame every second). When the file ends without ``--loop`` the process exits, as
a camera that goes away. Once it serves, it prints one line, ``READY <port> <fps>``, on stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # ValueError: gi without the GStreamer typelibs
    sys.exit(f"rtsp_server: no GStreamer RTSP server for {sys.executable}: {exc}")

NEEDED_ELEMENTS = ("decodebin", "videoconvert", "intervideosink", "intervideosrc", "jpegenc", "rtpjpegpay")
H264_ELEMENTS = ("openh264enc", "h264parse", "rtph264pay")
DEFAULT_FPS = (25, 1)  # for files whose stream declares no frame rate


def missing_elements(codec: str = "jpeg") -> list[str]:
    """The GStreamer elements this server needs that are not installed (decoders excepted)."""
    names = NEEDED_ELEMENTS + (H264_ELEMENTS if codec == "h264" else ())
    return [name for name in names if Gst.ElementFactory.find(name) is None]


def producer(video: Path, channel: str) -> Gst.Pipeline:
    """Decodes ``video`` into the in-process channel as RGB, paced by the clock (``sync=true``)."""
    location = str(video).replace("\\", "\\\\").replace('"', '\\"')
    return Gst.parse_launch(
        f'filesrc location="{location}" ! decodebin ! videoconvert ! video/x-raw,format=RGB '
        f"! intervideosink name=sink channel={channel} sync=true"
    )


def encoder(fps: tuple[int, int], codec: str) -> str:
    """The end of a media's pipeline: raw video at ``fps`` encoded and payloaded for RTP."""
    num, den = fps
    if codec == "h264":
        gop = max(1, round(num / den))  # a key frame a second: a client joining waits at most that long
        return (
            "video/x-raw,format=I420 ! openh264enc bitrate=4000000 gop-size="
            f"{gop} ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1"
        )
    # JPEG means full-range YUV; from RGB, videoconvert makes it so (a decoder's limited-range I420
    # would pass through unchanged, and clients would see washed-out frames).
    return "video/x-raw,format=I420,colorimetry=1:4:0:0 ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26"


def media_launch(channel: str, fps: tuple[int, int], codec: str) -> str:
    """The pipeline each RTSP media runs: the channel's current picture at ``fps``, encoded."""
    num, den = fps
    source = f"intervideosrc channel={channel} ! video/x-raw,framerate={num}/{den} ! videoconvert"
    return f"( {source} ! {encoder(fps, codec)} )"


def file_launch(video: Path, fps: tuple[int, int], codec: str) -> str:
    """The pipeline of a media of its own per client (``--per-client``): the file from its first frame."""
    location = str(video).replace("\\", "\\\\").replace('"', '\\"')
    num, den = fps
    return (
        f'( filesrc location="{location}" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! videorate '
        f"! video/x-raw,framerate={num}/{den} ! videoconvert ! {encoder(fps, codec)} )"
    )


def preroll(pipeline: Gst.Pipeline) -> tuple[int, int]:
    """Brings the producer to PAUSED (its first frame decoded) and returns the stream's frame rate.

    A file GStreamer has no decoder for (``gstreamer1.0-libav`` has FFmpeg's) fails here, not later.
    """
    pipeline.set_state(Gst.State.PAUSED)
    change, _, _ = pipeline.get_state(10 * Gst.SECOND)
    if change != Gst.StateChangeReturn.SUCCESS:
        message = pipeline.get_bus().pop_filtered(Gst.MessageType.ERROR)
        detail = message.parse_error()[0].message if message else f"state change: {change.value_nick}"
        pipeline.set_state(Gst.State.NULL)
        raise SystemExit(f"rtsp_server: cannot decode the video: {detail}")
    caps = pipeline.get_by_name("sink").get_static_pad("sink").get_current_caps()
    ok, num, den = caps.get_structure(0).get_fraction("framerate") if caps else (False, 0, 1)
    return (num, den) if ok and num > 0 else DEFAULT_FPS


def rewind(pipeline: Gst.Pipeline, flags: Gst.SeekFlags) -> None:
    """Plays the file from its start again, as a segment that ends in SEGMENT_DONE instead of EOS.

    A segment seek without FLUSH queues the next pass behind the current one, so the clock keeps
    running and the last frame is shown for its full duration: the loop has no jump and no gap.
    """
    pipeline.seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.END, 0)


def parent_gone(fd: int, _condition: GLib.IOCondition, loop: GLib.MainLoop) -> bool:
    """Quits once stdin ends: the parent process that holds its pipe has exited."""
    if os.read(fd, 4096):
        return GLib.SOURCE_CONTINUE
    loop.quit()
    return GLib.SOURCE_REMOVE


def fraction(fps: float) -> tuple[int, int]:
    """``fps`` as the integer fraction GStreamer caps want (29.97 -> 29970/1000)."""
    return (round(fps * 1000), 1000) if fps != int(fps) else (int(fps), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--port", type=int, default=8554, help="0 picks a free port (printed on READY)")
    parser.add_argument("--path", default="/camera")
    parser.add_argument("--fps", type=float, default=None, help="the frame rate sent (default: the file's)")
    parser.add_argument("--loop", action="store_true", help="restart the file at its end instead of exiting")
    parser.add_argument("--codec", choices=("jpeg", "h264"), default="jpeg")
    parser.add_argument("--check", action="store_true", help="only check that the video can be served")
    parser.add_argument("--exit-with-stdin", action="store_true", help="exit when stdin closes (the parent died)")
    parser.add_argument(
        "--per-client",
        action="store_true",
        help="each client gets the file from its first frame, in real time (a recording, not a camera: its "
        "frame numbers are the file's, which a benchmark needs to compare answers with labels)",
    )
    args = parser.parse_args(argv)

    Gst.init(None)
    if missing := missing_elements(args.codec):
        print(f"rtsp_server: missing GStreamer elements: {' '.join(missing)}", file=sys.stderr)
        return 2
    if not args.video.is_file():
        print(f"rtsp_server: no video file {args.video}", file=sys.stderr)
        return 2

    loop = GLib.MainLoop()
    channel = f"camera{os.getpid()}"
    pipeline = producer(args.video, channel)
    file_fps = preroll(pipeline)
    if args.check:
        pipeline.set_state(Gst.State.NULL)
        return 0
    fps = fraction(args.fps) if args.fps else file_fps

    def on_message(_bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.SEGMENT_DONE:
            rewind(pipeline, Gst.SeekFlags.SEGMENT)
        elif message.type == Gst.MessageType.EOS:
            GLib.timeout_add(500, loop.quit)  # time for the last frame to reach the clients
        elif message.type == Gst.MessageType.ERROR:
            print(f"rtsp_server: {message.parse_error()[0].message}", file=sys.stderr)
            loop.quit()

    bus = pipeline.get_bus()
    bus.add_signal_watch()
    bus.connect("message", on_message)

    factory = GstRtspServer.RTSPMediaFactory()
    if args.per_client:
        pipeline.set_state(Gst.State.NULL)
        factory.set_launch(file_launch(args.video, fps, args.codec))
        factory.set_shared(False)
    else:
        factory.set_launch(media_launch(channel, fps, args.codec))
        factory.set_shared(True)  # one encoder for all clients, as a camera has
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1

    if args.loop and not args.per_client:
        rewind(pipeline, Gst.SeekFlags.FLUSH | Gst.SeekFlags.SEGMENT)
    if not args.per_client:
        pipeline.set_state(Gst.State.PLAYING)
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, lambda: loop.quit() or GLib.SOURCE_REMOVE)
    if args.exit_with_stdin:  # the parent holds the pipe: its end (EOF or hang-up) means it is gone
        GLib.io_add_watch(sys.stdin.fileno(), GLib.PRIORITY_DEFAULT, GLib.IO_IN | GLib.IO_HUP, parent_gone, loop)
    print(f"READY {server.get_bound_port()} {fps[0] / fps[1]:g}", flush=True)
    try:
        loop.run()
    finally:
        pipeline.set_state(Gst.State.NULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
