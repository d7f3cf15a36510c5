"""The one way netspec writes files and directories: beside the target, then renamed in.

A crash, a kill or a full disk leaves either the old file or the new one at the
target, never a torn one, and never a missing one. Every writer of the package
(snapshots, converted nets, LMDBs, image means, .dot files, parsed logs, plots)
goes through `write_file`, `open_for_write` or `building_directory`.

- The temp file sits in the target's folder (same filesystem, so the rename is
  atomic) and is named `.<target name>.netspec-tmp.<pid>.<random>`: the pattern
  `is_temp_name` and `remove_stale_temps` recognise, and no one else's.
- It is created with mode 0666 minus the umask, as Caffe's files are (0644
  under umask 022); tempfile.mkstemp would make it 0600.
- Data is fsynced before the rename and the folder after it, so the new name
  survives a power cut too.
"""
import contextlib
import os
import re
import secrets
import shutil

from .errors import NetspecError

TEMP_MARK = ".netspec-tmp."


def temp_name_for(path):
    """A fresh temp path beside `path` in netspec's pattern (not created)."""
    parent, base = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(parent, f".{base}{TEMP_MARK}{os.getpid()}.{secrets.token_hex(4)}")


# Before durable.py, snapshots went through tempfile.mkstemp: `.<target>.<8 random chars>.tmp`.
_OLD_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def is_temp_name(name, target_base=None):
    """Whether a file name is one of netspec's temp names (for `target_base`, when given)."""
    if target_base is not None and not name.startswith(f".{target_base}."):
        return False
    return name.startswith(".") and (TEMP_MARK in name or bool(_OLD_TEMP.match(name)))


def _cannot_write(path, error):
    return NetspecError(f"{path}: cannot write ({error.strerror or error}); any previous file there is unchanged")


def sync_directory(directory):
    """fsync a folder so that renames in it are durable; silently skipped where unsupported."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(path):
    """(fd, temp path): a new file beside `path` with umask permissions, opened for writing."""
    while True:
        tmp = temp_name_for(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def _refuse_non_regular_target(path):
    try:
        st = os.stat(path)
    except OSError:
        return
    import stat
    if stat.S_ISDIR(st.st_mode):
        raise NetspecError(f"{path}: is a directory; cannot write a file there")
    if not stat.S_ISREG(st.st_mode):
        raise NetspecError(f"{path}: not a regular file (a device, FIFO or socket); refusing to replace it")


@contextlib.contextmanager
def open_for_write(path, mode="wb", **kwargs):
    """A file object on a temp file beside `path`; renamed over `path` when the block ends cleanly.

    On any exception (or a kill) the temp file is removed (or left for
    remove_stale_temps) and `path` keeps its previous contents.
    """
    path = os.fspath(path)
    if "w" not in mode:
        raise ValueError("open_for_write takes a write mode ('w', 'wb', ...)")
    _refuse_non_regular_target(path)
    try:
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise _cannot_write(path, e) from None
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise
    sync_directory(os.path.dirname(os.path.abspath(path)))


def write_file(path, data):
    """Write bytes (or str, as UTF-8) to `path` durably: old file or new, never torn."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open_for_write(path, "wb") as f:
        f.write(data)


def make_temp_dir_beside(path):
    """A new empty directory beside `path` in netspec's temp pattern (umask permissions)."""
    while True:
        tmp = temp_name_for(path)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def building_directory(dest, owned, overwrite=False):
    """Yield a fresh directory beside `dest` to build into; move it in when the block ends cleanly.

    `owned` names the files the format consists of: a set (an LMDB's data.mdb
    and lock.mdb) or, for formats whose file names vary (LevelDB), a predicate. With dest absent the built directory is renamed to dest. With
    dest present (overwrite=True): when dest holds nothing but owned files, the
    two directories are swapped and the old owned files removed; when dest
    holds anything else too, each built file is renamed over its namesake
    inside dest and stale owned files are removed, so the user's other files
    in that folder are never touched. On failure dest is as it was.
    """
    shown = os.fspath(dest)
    dest = os.path.abspath(shown)
    owns = owned if callable(owned) else set(owned).__contains__
    if os.path.lexists(dest):
        if not overwrite:
            raise NetspecError(f"'{shown}' already exists; remove it first (or use --overwrite)")
        if os.path.islink(dest) or not os.path.isdir(dest):
            raise NetspecError(f"refusing to replace '{shown}': it is not a directory")
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = make_temp_dir_beside(dest)
    except OSError as e:
        raise NetspecError(f"cannot create '{shown}': {e.strerror or e}") from None
    try:
        yield tmp
        built = set(os.listdir(tmp))
        strays = {name for name in built if not owns(name)}
        if strays:
            raise NetspecError(f"internal: building '{shown}' made unexpected files {sorted(strays)}")
        for name in built:
            with open(os.path.join(tmp, name), "rb+") as f:
                os.fsync(f.fileno())
        _move_directory_in(tmp, dest, shown, owns, built)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_directory(os.path.dirname(dest))


def _move_directory_in(tmp, dest, shown, owns, built):
    try:
        if not os.path.lexists(dest):
            os.rename(tmp, dest)
            return
        present = set(os.listdir(dest))
        if all(owns(name) for name in present):
            backup = temp_name_for(dest)
            os.rename(dest, backup)
            try:
                os.rename(tmp, dest)
            except OSError:
                os.rename(backup, dest)
                raise
            for name in present:
                os.unlink(os.path.join(backup, name))
            os.rmdir(backup)
            return
        # The folder holds the user's other files: replace ours one by one, leave theirs.
        for name in sorted(built):
            os.replace(os.path.join(tmp, name), os.path.join(dest, name))
        for name in {name for name in present if owns(name)} - built:
            os.unlink(os.path.join(dest, name))
        os.rmdir(tmp)
        sync_directory(dest)
    except OSError as e:
        raise NetspecError(f"cannot move the new '{shown}' into place: {e.strerror or e}") from None


def remove_stale_temps(folder, target_base_prefix, older_than):
    """Delete netspec temp files (and dirs) in `folder` for targets starting with `target_base_prefix`
    and last modified before `older_than` (a time.time()); return the names removed.

    Call it only while holding the lock that makes every such writer yours.
    """
    removed = []
    try:
        names = os.listdir(folder or ".")
    except OSError:
        return removed
    start = f".{target_base_prefix}"
    for name in names:
        if not (name.startswith(start) and is_temp_name(name)):
            continue
        path = os.path.join(folder or ".", name)
        try:
            st = os.lstat(path)
            if st.st_mtime >= older_than:
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(name)
        except OSError:
            continue
    return removed
