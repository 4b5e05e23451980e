"""The model registry: numbered versions of one model, a champion pointer, the frozen eval set.

Not to be confused with ``selftrain.plugins.registry`` (the plugin registry). Layout under
``<retrain.artifacts_root>/<retrain.model_name>/`` (a local path or s3://, through
``selftrain.core.common.io``)::

    registry.json            name, creation time, label set, the frozen evaluation set's summary
    eval/frozen.parquet      the frozen evaluation set (id, text, label), drawn once, never trained on
    champion.json            the champion pointer: version, previous, stack, history
    last_run.json            what the last retrain saw (data fingerprints, config digest) and did
    versions/v0001/          a committed version: model/ (save_pretrained, tokenizer included),
                             config.yaml, metrics.json, version.json, README.md (model card), COMMITTED
    runs/<key>/              the challengers' run directories

Crash safety. A version is listed only once committed: locally it is written under
``versions/.tmp-vNNNN-<random>/`` and renamed into place (one atomic rename); on object storage,
where a rename is a copy, its files are uploaded under ``versions/vNNNN/`` and the ``COMMITTED``
marker is written last. The champion pointer is one small JSON file replaced atomically (a temp
file then ``os.replace`` locally; a single PUT on S3), so a promotion or rollback either happened
or did not, even when the process dies in the middle. One writer at a time is assumed (the retrain
deployment has a concurrency limit of 1).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from selftrain.core.common import io

VERSION_RE = re.compile(r"^v(\d{4,})$")
MARKER = "COMMITTED"


class RegistryError(ValueError):
    """A registry operation cannot be done as asked; the message says what, where and how to fix it."""


# how a damaged registry file is rebuilt, besides restoring it from a backup (the errors' "Fix:")
_REPAIR = {"champion.json": "selftrain models promote VERSION rewrites it (selftrain models list shows the versions)",
           "last_run.json": "delete it: the next retrain then treats the data and config as new"}


def _checkpoint(point: str) -> None:
    """Fault-injection point, a no-op. The crash-safety tests replace it in a child process to stop
    that process right here: ``version-commit`` (a version fully written, not yet committed) and
    ``champion-write`` (the new pointer written to its temp file / about to be PUT)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Registry:
    """One model's registry at ``root`` (= ``<artifacts_root>/<model_name>``)."""

    def __init__(self, root: str | os.PathLike, name: str | None = None):
        root = os.fspath(root)
        self.root = root.rstrip("/") if io.is_remote(root) else str(Path(root.removeprefix("file://")))
        self.name = name or self.root.rstrip("/").rsplit("/", 1)[-1].rsplit(os.sep, 1)[-1]

    @classmethod
    def for_config(cls, cfg) -> Registry:
        return cls(io.join(cfg.retrain.artifacts_root, cfg.retrain.model_name), cfg.retrain.model_name)

    def __repr__(self) -> str:
        return f"Registry({self.root!r})"

    def uri(self, *parts: str) -> str:
        return io.join(self.root, *parts)

    # ------------------------------------------------------------ reading
    def _fresh_fs(self, uri: str):
        fs, path = io.fs_path(uri)
        if io.is_remote(uri):
            fs.invalidate_cache()  # another process may have written since this one listed
        return fs, path

    def exists(self) -> bool:
        fs, path = self._fresh_fs(self.uri("registry.json"))
        return fs.exists(path)

    def _json(self, *parts: str, default=None):
        fs, path = self._fresh_fs(self.uri(*parts))
        if not fs.exists(path):
            return default
        try:
            return io.read_json(self.uri(*parts))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            how = f", or {_REPAIR[parts[-1]]}" if parts[-1] in _REPAIR else ""
            raise RegistryError(f"{self.uri(*parts)} is damaged: not valid JSON ({exc}). Fix: restore it from a backup "
                                f"(or your object store's versioning){how}") from None

    def info(self) -> dict:
        info = self._json("registry.json")
        if info is None:
            raise RegistryError(
                f"No model registry at {self.root} (no registry.json). The retrain flow creates it on its first run; "
                "or point at an existing one with --root ARTIFACTS_ROOT --name MODEL_NAME (or -c CONFIG, whose "
                "retrain.artifacts_root and retrain.model_name are used).")
        return info

    def _entries(self) -> list[str]:
        fs, path = self._fresh_fs(self.uri("versions"))
        if not fs.exists(path):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]

    def versions(self) -> list[str]:
        """Committed versions, oldest first. Half-written ones (no marker, temp names) are not listed."""
        fs, _ = self._fresh_fs(self.root)
        out = []
        for name in self._entries():
            if VERSION_RE.match(name) and fs.exists(io.fs_path(self.uri("versions", name, MARKER))[1]):
                out.append(name)
        return sorted(out, key=lambda v: int(v[1:]))

    def resolve(self, version: str) -> str:
        """``v2``, ``2``, ``v0002`` or ``champion`` -> ``v0002`` (committed), else a RegistryError."""
        have = self.versions()
        if not have:  # a folder that is no registry (e.g. the artifacts root) says so, not "no champion yet"
            self.info()
        text = str(version).strip()
        if text == "champion":
            champ = self.champion()
            if champ is None:
                raise RegistryError(f"The registry at {self.root} has no champion yet ({self._have(have)}). "
                                    "Fix: selftrain models promote VERSION.")
            return champ
        m = re.fullmatch(r"[vV]?(\d+)", text)
        if m and f"v{int(m.group(1)):04d}" in have:
            return f"v{int(m.group(1)):04d}"
        raise RegistryError(f"Unknown version {version!r}; registry at {self.root} has {self._have(have)}. "
                            "Fix: use one of those (selftrain models list).")

    @staticmethod
    def _have(have: list[str]) -> str:
        return ", ".join(have) if have else "no versions yet"

    def version_uri(self, version: str) -> str:
        return self.uri("versions", self.resolve(version))

    def model_uri(self, version: str) -> str:
        return self.uri("versions", self.resolve(version), "model")

    def version_info(self, version: str) -> dict:
        return self._json("versions", self.resolve(version), "version.json", default={})

    def champion_state(self, repair: bool = False) -> dict:
        """champion.json (an empty pointer when there is none). A damaged one (not JSON, no ``version``
        key, a version that is not committed) raises: read as "no champion", it let a retrain promote
        any challenger over the real champion. ``repair``: the state to rewrite it from instead (what
        ``promote`` does, the fix the error names)."""
        empty = {"name": self.name, "version": None, "previous": None, "stack": [], "history": []}
        try:
            st = self._json("champion.json", default=empty)
            if not isinstance(st, dict) or "version" not in st:
                raise RegistryError(f"{self.uri('champion.json')} is damaged: it has no 'version' key. "
                                    f"Fix: {_REPAIR['champion.json']}")
            if st["version"] is not None and st["version"] not in self.versions():
                raise RegistryError(f"{self.uri('champion.json')} names {st['version']!r} as the champion, which is "
                                    f"not a committed version ({self._have(self.versions())}). "
                                    f"Fix: {_REPAIR['champion.json']}")
        except RegistryError:
            if not repair:
                raise
            return {**empty, "history": [{"action": "repair", "at": now(), "reason": "champion.json was damaged"}]}
        return st

    def check(self) -> None:
        """Read every pointer and version record once: a damaged file raises its RegistryError now
        (the retrain flow calls this before it trains a challenger, not after)."""
        self.champion_state()
        self.last_run()
        for v in self.versions():  # read directly: version_info(v) would list the versions again for each
            self._json("versions", v, "version.json", default={})

    def champion(self) -> str | None:
        return self.champion_state().get("version")

    def last_run(self) -> dict | None:
        return self._json("last_run.json")

    def local_model(self, version: str = "champion") -> str:
        """A local directory with the model of ``version`` (default: the champion), for from_pretrained."""
        uri = self.model_uri(version)
        if not io.exists(io.join(uri, "config.json")):
            raise RegistryError(f"{uri} holds no saved model (no config.json): the version's model/ folder is missing "
                                "or damaged. Fix: restore it from a backup, or promote / use another version "
                                "(selftrain models list)")
        return io.local_dir(uri)

    # ------------------------------------------------------------ writing
    def create(self, info: dict, eval_frame) -> dict:
        """Write the frozen evaluation set, then registry.json (which makes the registry exist)."""
        if self.exists():
            raise RegistryError(f"A registry already exists at {self.root}; its frozen evaluation set is fixed.")
        try:
            io.write_parquet(eval_frame, self.uri("eval", "frozen.parquet"))
        except (NotADirectoryError, FileExistsError) as exc:
            raise RegistryError(f"cannot create the model registry at {self.root}: {exc}. Fix: retrain.artifacts_root "
                                "(and retrain.model_name) must name a folder (or an s3:// prefix), not a file") from None
        info = {"name": self.name, "created": now(), **info}
        io.write_json(self.uri("registry.json"), info)
        return info

    def write_last_run(self, record: dict) -> None:
        io.write_json(self.uri("last_run.json"), record)

    def _next_number(self) -> int:
        nums = [int(m.group(1)) for n in self._entries() if (m := VERSION_RE.match(n))]
        return max(nums, default=0) + 1

    def find(self, key: str, value) -> str | None:
        """The committed version whose version.json has ``key == value`` (retries are idempotent)."""
        for v in reversed(self.versions()):
            if self.version_info(v).get(key) == value:
                return v
        return None

    def register(self, model_uri: str, meta: dict, files: dict[str, str] | Callable[[str], dict[str, str]]) -> str:
        """Copy the model directory at ``model_uri`` and write ``files`` (name -> text, or a function
        of the new version's name returning them) as the next version, committed at the very end;
        returns its name. ``meta`` becomes version.json."""
        version = f"v{self._next_number():04d}"
        src = io.local_dir(model_uri)
        if not (Path(src) / "config.json").exists():
            raise RegistryError(f"{model_uri} is not a saved model (no config.json); nothing registered.")
        files = files(version) if callable(files) else files
        files = {**files, "version.json": json.dumps({**meta, "version": version, "name": self.name}, indent=2,
                                                     default=str) + "\n"}
        marker = json.dumps({"version": version, "committed": now()}) + "\n"
        if io.is_remote(self.root):
            base = self.uri("versions", version)
            fs, path = io.fs_path(base)
            fs.put(src.rstrip("/") + "/", f"{path}/model", recursive=True)
            for name, text in files.items():
                io.write_text(io.join(base, name), text)
            _checkpoint("version-commit")
            io.write_text(io.join(base, MARKER), marker)  # the commit: listed from here on
            fs.invalidate_cache()
            return version
        vdir = Path(self.uri("versions"))
        vdir.mkdir(parents=True, exist_ok=True)
        tmp = vdir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(src, tmp / "model", ignore=shutil.ignore_patterns(".complete"))
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            (tmp / MARKER).write_text(marker)
            _checkpoint("version-commit")
            os.rename(tmp, vdir / version)  # the commit: one atomic rename
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return version

    def _write_champion(self, state: dict) -> None:
        data = (json.dumps(state, indent=2, default=str) + "\n").encode()
        uri = self.uri("champion.json")
        if io.is_remote(uri):
            _checkpoint("champion-write")
            io.write_bytes(uri, data)  # one PUT of a small object: atomic
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".champion.json.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            _checkpoint("champion-write")
            os.replace(tmp, path)  # atomic: readers see the old pointer or the new one
        finally:
            if tmp.exists():
                tmp.unlink()

    def promote(self, version: str, *, reason: str = "", by: str = "python") -> dict:
        """Make ``version`` the champion. Returns the change (``changed`` False if it already is).
        Rewrites a damaged champion.json (the fix its error names); refuses a version whose model is gone."""
        v = self.resolve(version)
        fs, mpath = self._fresh_fs(self.uri("versions", v, "model", "config.json"))
        if not fs.exists(mpath):
            raise RegistryError(f"{v} has no model at {self.uri('versions', v, 'model')} (no config.json: deleted?), "
                                "so it cannot serve as champion. Fix: promote another version (selftrain models list), "
                                "or restore the folder")
        st = self.champion_state(repair=True)
        prev = st.get("version")
        entry = {"action": "promote", "version": v, "previous": prev, "at": now(), "by": by, "reason": reason}
        if prev == v:
            return {**entry, "changed": False}
        self._write_champion({"name": self.name, "version": v, "previous": prev, "stack": [*st.get("stack", []), v],
                              "updated": entry["at"], "history": [*st.get("history", []), entry]})
        return {**entry, "changed": True}

    def rollback(self, *, reason: str = "", by: str = "python") -> dict:
        """Restore the champion before the current one (undo the last promotion or promote)."""
        st = self.champion_state()
        stack = list(st.get("stack", []))
        if len(stack) < 2:
            cur = st.get("version")
            raise RegistryError(
                f"Nothing to roll back to: the registry at {self.root} "
                + (f"has had only one champion ({cur})." if cur else "has no champion yet.")
                + " To choose a version explicitly: selftrain models promote VERSION.")
        cur, target = stack[-1], stack[-2]
        self.resolve(target)  # still committed
        entry = {"action": "rollback", "version": target, "previous": cur, "at": now(), "by": by, "reason": reason}
        self._write_champion({"name": self.name, "version": target, "previous": cur, "stack": stack[:-1],
                              "updated": entry["at"], "history": [*st.get("history", []), entry]})
        return {**entry, "changed": True}
