"""A real RTSP server for the tests: GStreamer's RTSP server on 127.0.0.1.

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--file clip.mp4] [--user U --password PW]

Serves ``rtsp://127.0.0.1:PORT/live`` (a live test pattern, H.264 320x240 at 12 fps, a keyframe every
second) and, with ``--file``, ``rtsp://127.0.0.1:PORT/clip`` (an H.264 MP4 file, played once). With
``--user`` and ``--password`` both paths require that basic-authentication login. Prints ``ready`` on
stdout once serving; exits on SIGTERM or SIGINT.

Run by Debian's /usr/bin/python3 with python3-gi and the GStreamer packages that .ci/run installs (the
project's own interpreter does not have gi): tests/conftest.py starts it through the ``rtsp_server``
fixture.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LIVE = (
    "( videotestsrc is-live=true ! video/x-raw,width=320,height=240,framerate=12/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=12 ! rtph264pay name=pay0 pt=96 )"
)
ROLE = "user"


def clip_launch(path: str) -> str:
    """The pipeline serving an H.264 MP4 file once (video only)."""
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    return f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'


def factory(launch: str, secured: bool) -> GstRtspServer.RTSPMediaFactory:
    made = GstRtspServer.RTSPMediaFactory()
    made.set_launch(launch)
    if secured:
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string(
                f"{ROLE}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
            )
        )
        made.set_permissions(permissions)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", help="an H.264 MP4 served at /clip")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    if (args.user is None) != (args.password is None):
        parser.error("--user and --password go together")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    secured = args.user is not None
    if secured:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
    mounts = server.get_mount_points()
    mounts.add_factory("/live", factory(LIVE, secured))
    if args.file:
        mounts.add_factory("/clip", factory(clip_launch(args.file), secured))
    if server.attach(None) == 0:
        print(f"cannot serve on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    for number in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, number, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
