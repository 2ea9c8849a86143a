"""What `strg infer` reads: files, globs, RTSP URLs and a sources file, turned into SourceSpecs.

    specs, problems = parse_sources(["a.mp4", "clips/*.mp4", "rtsp://cam1/stream"], Path("cams.txt"))

A sources file holds one source per line; blank lines and lines starting with ``#`` are ignored:

    # [name=NAME]  URL or path                                  [per-stream options]
    name=door      rtsp://${CAM_USER}:${CAM_PASSWORD}@10.0.0.5:554/h264
    name=yard      rtsp://10.0.0.6/live     user_env=YARD_USER password_env=YARD_PW geometry=letterbox
                   clips/*.mp4              geometry=roi roi=0,120,640,360

Tokens are split like a shell line (quote a path with spaces). Options: ``geometry=crop|letterbox|roi``
(default: crop, the centre crop), ``roi=x,y,w,h`` (source pixels; implies geometry=roi), and for URLs
``user_env=VAR`` / ``password_env=VAR`` (the login from environment variables). ``${VAR}`` anywhere in a
URL or path is replaced by the variable's value (percent-encoded inside the ``user:password@`` part), so
credentials need not be written in the file or on the command line. Relative paths in a sources file are
relative to the file's folder.

Problems are one line each, already masked, and name the source (and the sources file's line): a glob
that matches nothing, a missing file, a missing variable, an unknown option. The caller reports them and
goes on with the other sources. A missing file is a problem here, before anything opens; a file that
exists but does not decode is reported by its reader.

Credentials never leave this module unmasked except in ``SourceSpec.url``: ``display`` and ``name``
hold none, and :class:`Redactor` masks them in any text (PyAV's error messages quote the whole URL).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, unquote

from strg_deploy.errors import StrgError
from strg_deploy.stream.geometry import GEOMETRIES, parse_roi
from strg_deploy.stream.types import SourceSpec

__all__ = ["GEOMETRIES", "Redactor", "is_live_url", "mask_url", "parse_sources"]

MASK = "***"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_LIVE_SCHEMES = frozenset({"rtsp", "rtsps"})
_FILE_SCHEMES = frozenset({"http", "https", "file"})
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_OPTIONS = ("geometry", "roi", "user_env", "password_env")
# scheme://userinfo@ inside any text (userinfo: no whitespace, slash or @); the last @ before the host wins
_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^\s/@'\"]+(?:@[^\s/@'\"]+)*@")


def _split_url(url: str) -> tuple[str, str | None, str] | None:
    """(``scheme://``, userinfo or None, the rest from the host on); None when ``url`` is not a URL."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    head = match.group(0)
    rest = url[len(head) :]
    end = len(rest)
    for stop in "/?#":
        at = rest.find(stop)
        if at >= 0:
            end = min(end, at)
    at = rest.rfind("@", 0, end)
    if at < 0:
        return head, None, rest
    return head, rest[:at], rest[at + 1 :]


def mask_url(url: str) -> str:
    """The URL with its user and password replaced by ``***`` (``rtsp://***:***@host:554/x``; a user
    without a password gives ``rtsp://***@host/x``). Other URLs and paths come back unchanged."""
    parts = _split_url(url)
    if parts is None or parts[1] is None:
        return url
    head, userinfo, rest = parts
    masked = f"{MASK}:{MASK}" if ":" in userinfo else MASK
    return f"{head}{masked}@{rest}"


def is_live_url(url: str) -> bool:
    """Whether ``url`` is a camera stream (``rtsp://`` or ``rtsps://``)."""
    match = _SCHEME.match(url)
    return match is not None and match.group(1).lower() in _LIVE_SCHEMES


class Redactor:
    """Masks credentials in any text. ``secrets``: source URLs or paths; a URL's raw and
    percent-decoded forms become the masked URL, its ``user:password`` part ``***:***`` and its
    password ``***``; paths and URLs without a login hold nothing secret and are ignored. ``plain``:
    other secret strings (``***``). Whatever was registered, ``text`` also masks the login of any URL
    it finds."""

    def __init__(self, secrets: Iterable[str] = (), *, plain: Iterable[str] = ()) -> None:
        replacements: dict[str, str] = {value: MASK for value in plain if value}
        for secret in secrets:
            parts = _split_url(secret) if secret else None
            if parts is None or parts[1] is None:
                continue
            masked = mask_url(secret)
            replacements[secret] = masked
            replacements[unquote(secret)] = masked
            userinfo = parts[1]
            replacements[userinfo] = mask_url(f"x://{userinfo}@")[4:-1]
            user, _, password = userinfo.partition(":")
            for value in (password, unquote(password)):
                if value:
                    replacements[value] = MASK
        self._pairs = sorted(replacements.items(), key=lambda pair: -len(pair[0]))

    def text(self, text: str) -> str:
        """``text`` with every registered secret and every URL login masked."""
        for secret, masked in self._pairs:
            if secret in text:
                text = text.replace(secret, masked)
        return _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}{MASK}:{MASK}@", text)

    __call__ = text


def parse_sources(
    arguments: Sequence[str],
    sources_file: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    realtime: bool = False,
) -> tuple[list[SourceSpec], list[str]]:
    """The sources of the command line (files, globs, URLs), then those of ``sources_file``.

    realtime: files are read like cameras (paced by their timestamps, ``live=True``).
    Returns (specs in order, with unique names; problems: one masked line per unusable source).
    Raises StrgError when ``sources_file`` itself cannot be read.
    """
    entries: list[tuple[str, str | None, dict[str, str], Path | None, str]] = []
    problems: list[str] = []
    for argument in arguments:
        entries.append((argument, None, {}, None, ""))
    if sources_file is not None:
        path = Path(sources_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise StrgError(f"cannot read sources file {path}: {reason}") from None
        for number, line in enumerate(lines, 1):
            where = f"{path}:{number}: "
            entry = _parse_line(line, path.parent, where, problems)
            if entry is not None:
                entries.append((*entry, where))

    specs: list[SourceSpec] = []
    taken: set[str] = set()
    for template, name, options, folder, where in entries:
        for url, display, live in _expand(template, options, folder, environ, realtime, where, problems):
            stream_options = _stream_options(options, display, where, problems)
            if stream_options is None:
                continue
            unique = _unique(name or _default_name(url, live), taken)
            specs.append(SourceSpec(unique, url, display, live, stream_options))
    return specs, problems


def _parse_line(
    line: str, folder: Path, where: str, problems: list[str]
) -> tuple[str, str | None, dict[str, str], Path] | None:
    """(URL template, name, options, folder) of one sources-file line; None for blanks and comments."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        tokens = shlex.split(stripped)
    except ValueError as error:  # the line is not echoed: it may hold a password
        problems.append(f"{where}cannot split the line into a URL and options ({error})")
        return None
    name = None
    if tokens and tokens[0].startswith("name="):
        name = tokens.pop(0)[len("name=") :]
        if not _NAME.match(name):
            problems.append(
                f"{where}stream name {name!r} must start with a letter or digit and hold only letters, "
                "digits, '.', '_' and '-'"
            )
            return None
    if not tokens:
        problems.append(f"{where}no URL or path on the line")
        return None
    template, options = tokens[0], {}
    for token in tokens[1:]:
        key, equals, value = token.partition("=")
        if not equals or key not in _OPTIONS:
            known = ", ".join(f"{k}=" for k in _OPTIONS)
            shown = key if equals else mask_url(token)  # never the value: it may be a password
            problems.append(f"{where}unknown option {shown!r} (options: {known})")
            return None
        options[key] = value
    return template, name, options, folder


def _substitute(template: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """``template`` with each ``${VAR}`` replaced (percent-encoded inside a URL's userinfo); the names
    of the missing variables."""
    missing: list[str] = []

    def value(match: re.Match, encode: bool) -> str:
        name = match.group(1)
        if name not in environ:
            missing.append(name)
            return match.group(0)
        return quote(environ[name], safe="") if encode else environ[name]

    parts = _split_url(template)
    if parts is not None and parts[1] is not None:
        head, userinfo, rest = parts
        plain = lambda text: _VARIABLE.sub(lambda m: value(m, False), text)  # noqa: E731
        out = f"{plain(head)}{_VARIABLE.sub(lambda m: value(m, True), userinfo)}@{plain(rest)}"
    else:
        out = _VARIABLE.sub(lambda m: value(m, False), template)
    return out, missing


def _expand(
    template: str,
    options: dict[str, str],
    folder: Path | None,
    environ: Mapping[str, str],
    realtime: bool,
    where: str,
    problems: list[str],
) -> list[tuple[str, str, bool]]:
    """(url, display, live) of each source that ``template`` stands for (a glob: several)."""
    shown = mask_url(template)
    source, missing = _substitute(template, environ)
    if missing:
        names = ", ".join(sorted(set(missing)))
        problems.append(f"{where}{shown}: environment variable {names} is not set")
        return []
    match = _SCHEME.match(source)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme in _LIVE_SCHEMES:
            url = _with_login(source, options, environ, where, problems)
            return [] if url is None else [(url, mask_url(url), True)]
        if scheme in _FILE_SCHEMES:
            return [(source, mask_url(source), realtime)]
        problems.append(
            f"{where}{mask_url(source)}: unsupported URL scheme {scheme!r} "
            "(rtsp:// and rtsps:// cameras, http(s):// and file:// videos)"
        )
        return []
    if options.get("user_env") or options.get("password_env"):
        problems.append(f"{where}{source}: user_env and password_env apply to rtsp:// URLs only")
        return []
    path = Path(source).expanduser()
    if folder is not None and not path.is_absolute():
        path = folder / path
    text = str(path)
    if glob.has_magic(text) and not path.exists():
        found = sorted(glob.glob(text, recursive=True))
        files = [f for f in found if os.path.isfile(f)]
        if not files:
            problems.append(f"{where}{source}: no file matches this pattern")
        return [(f, f, realtime) for f in files]
    if path.is_dir():
        problems.append(f"{where}{source}: is a folder, not a video (use a pattern such as {source}/*.mp4)")
        return []
    if not path.exists():
        problems.append(f"{where}{source}: no such file")
        return []
    return [(text, text, realtime)]


def _with_login(
    url: str, options: dict[str, str], environ: Mapping[str, str], where: str, problems: list[str]
) -> str | None:
    """``url`` with the login of ``user_env`` / ``password_env`` put in (percent-encoded)."""
    user_var, password_var = options.get("user_env"), options.get("password_env")
    if not user_var and not password_var:
        return url
    shown = mask_url(url)
    if not user_var:
        problems.append(f"{where}{shown}: password_env needs user_env too")
        return None
    missing = [v for v in (user_var, password_var) if v and v not in environ]
    if missing:
        problems.append(f"{where}{shown}: environment variable {', '.join(missing)} is not set")
        return None
    head, userinfo, rest = _split_url(url)
    if userinfo is not None:
        problems.append(f"{where}{shown}: the URL already has a login; drop it or user_env/password_env")
        return None
    login = quote(environ[user_var], safe="")
    if password_var:
        login += ":" + quote(environ[password_var], safe="")
    return f"{head}{login}@{rest}"


def _stream_options(
    options: dict[str, str], display: str, where: str, problems: list[str]
) -> dict[str, object] | None:
    """The SourceSpec options (``geometry``, ``roi`` as an (x, y, w, h) tuple of ints); None on a problem."""
    out: dict[str, object] = {}
    geometry = options.get("geometry")
    if geometry is not None and geometry not in GEOMETRIES:
        problems.append(
            f"{where}{display}: geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}"
        )
        return None
    roi = options.get("roi")
    if roi is not None:
        try:
            box = parse_roi(roi)
        except StrgError:
            box = ()
        if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] <= 0 or box[3] <= 0:
            problems.append(
                f"{where}{display}: roi must be x,y,w,h in source pixels (x, y >= 0; w, h > 0), got {roi!r}"
            )
            return None
        if geometry not in (None, "roi"):
            problems.append(f"{where}{display}: roi= goes with geometry=roi, not geometry={geometry}")
            return None
        out["geometry"] = "roi"
        out["roi"] = box
    elif geometry == "roi":
        problems.append(f"{where}{display}: geometry=roi needs roi=x,y,w,h")
        return None
    elif geometry is not None:
        out["geometry"] = geometry
    return out


def _default_name(url: str, live: bool) -> str:
    """A name without credentials: a file's stem, a URL's host and path (``10.0.0.5_h264``)."""
    parts = _split_url(url)
    if parts is None:
        raw = Path(url).stem
    else:
        rest = parts[2]
        host_port, _, path = rest.partition("/")
        host = host_port.rsplit(":", 1)[0] if host_port.count(":") == 1 else host_port
        path = re.split(r"[?#]", path, maxsplit=1)[0]
        raw = host + ("_" + path if path.strip("/") else "")
        if not live and path:
            raw = Path(path).stem or raw
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("._-")
    return name or "stream"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name-2``, ``name-3``... when it is taken; the result is added to ``taken``."""
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}-{k}"
    taken.add(candidate)
    return candidate
