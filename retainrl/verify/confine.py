"""OS-level confinement of the zygote (once, inherited by every program) and of each program.

Layers, each applied when this machine permits it and reported in `Isolation.layers`
(a missing one is listed in `Isolation.missing` and warned about by the Sandbox):

  namespaces  new mount, network (empty: no interfaces up), IPC, UTS and PID namespaces; the
              zygote is PID 1 of its PID namespace, so signals from its programs cannot reach
              it, /proc is remounted for the namespace with hidepid=invisible (a program sees
              only itself), and ending a job kills every process in it. As root these are created directly; otherwise inside a new user
              namespace that maps only the caller's own uid.
  identity    as root: a per-worker uid (no supplementary groups). If the Python installation
              is under a folder others cannot search (pyenv in /root), that folder is hidden
              behind an empty tmpfs in the zygote's mount namespace and only the installation
              is bind-mounted back, so the dropped uid can import the standard library (and
              sees nothing else of that folder). Not root: the caller's uid in a user namespace,
              capabilities dropped in each program process.
  tmp         a private tmpfs on /tmp (jobs' directories live there; the host's /tmp is hidden).
  landlock    reads only in the Python installation(s), /usr, /lib*, a few /etc and /dev files
              and the private /proc; writes only in the jobs' folder (each program: only its
              own job folder, a nested layer); no execve anywhere; no TCP bind/connect (ABI>=4);
              no signals or abstract unix sockets outside the domain (ABI>=6), so a program
              cannot signal or ptrace the zygote or the worker.
  rlimits     CPU, address space, file size, open files, core, processes (own uid only).
  no_new_privs set in the zygote (inherited).

  seccomp     (libseccomp, when installed) a deny-list: ptrace, process_vm_*, mount, unshare,
              setns, namespace flags on clone, bpf, perf, keyrings, io_uring, ... (see
              SECCOMP_DENY); everything else allowed (not an allow-list).

Not done: cgroups (CPU and memory are limited per process, not per job tree).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass, field

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 38, 36

# Landlock (include/uapi/linux/landlock.h); syscall numbers are the same on x86_64 and arm64.
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(os.uname().machine)
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR = 16, 32, 64, 128
FS_MAKE_REG, FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK = 256, 512, 1024, 2048
FS_MAKE_SYM, FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 4096, 8192, 16384, 32768
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2

READ = FS_READ_FILE | FS_READ_DIR
WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
         | FS_MAKE_SYM | FS_MAKE_FIFO | FS_MAKE_SOCK)
READ_ONLY_PATHS = ("/usr", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/localtime",
                   "/etc/os-release", "/proc", "/dev/urandom", "/dev/zero")


@dataclass
class Isolation:
    """What the zygote (and so every program) runs under; built by `confine_zygote`."""

    layers: dict = field(default_factory=dict)    # layer -> short description
    missing: dict = field(default_factory=dict)   # layer -> why it is not enforced
    uid: int | None = None                        # the programs' real uid when it is their own
    is_init: bool = False                         # PID 1 of a PID namespace
    landlock_abi: int = 0

    def as_dict(self) -> dict:
        return {"layers": dict(self.layers), "missing": dict(self.missing), "uid": self.uid,
                "pid_namespace": self.is_init, "landlock_abi": self.landlock_abi}


class _Libc:
    def __init__(self):
        self.lib = ctypes.CDLL(None, use_errno=True)
        self.lib.syscall.restype = ctypes.c_long

    def call(self, name: str, *args) -> int:
        r = getattr(self.lib, name)(*args)
        if r == -1:
            e = ctypes.get_errno()
            raise OSError(e, f"{name}: {os.strerror(e)}")
        return r

    def syscall(self, nr: int, *args) -> int:
        r = self.lib.syscall(ctypes.c_long(nr), *args)
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"syscall {nr}: {os.strerror(e)}")
        return r

    def mount(self, src, target, fstype, flags, data=None) -> None:
        enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
        self.call("mount", enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))

    def prctl(self, option: int, arg: int) -> None:
        self.call("prctl", option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


_libc: _Libc | None = None


def libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


# ------------------------------------------------------------------------------ Landlock
class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable)."""
    try:
        return libc().syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                              ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0


def fs_rights(abi: int) -> int:
    rights = READ | WRITE | FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def landlock_restrict(abi: int, rules: list[tuple[str, int]], handled_fs: int, *, net: bool, scoped: bool) -> None:
    """Add one Landlock layer to this thread: `handled_fs` rights only where `rules` grant them
    (path, rights); with `net`, no TCP bind/connect; with `scoped`, no signals or abstract unix
    sockets outside the domain. Paths that do not exist are skipped."""
    ruleset = landlock_ruleset(abi, rules, handled_fs, net=net, scoped=scoped)
    try:
        libc().syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def landlock_ruleset(abi: int, rules: list[tuple[str, int]], handled_fs: int, *, net: bool, scoped: bool) -> int:
    """The fd of a Landlock ruleset (see landlock_restrict), for restricting later."""
    attr = _RulesetAttr(handled_fs, (NET_BIND_TCP | NET_CONNECT_TCP) if net and abi >= 4 else 0,
                        (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if scoped and abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    lc = libc()
    ruleset = lc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):  # files take file rights only
                    rights &= FS_READ_FILE | FS_WRITE_FILE | FS_EXECUTE | FS_TRUNCATE | FS_IOCTL_DEV
                rule = _PathBeneath(rights & handled_fs, fd)
                lc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                           ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


# ------------------------------------------------------------------------------ seccomp
# Syscalls a program never needs and that widen what it can reach: other processes' memory,
# new namespaces (a user namespace would hand it capabilities), the mount table, kernel
# modules, BPF/perf, keyrings, io_uring (a second syscall path), handles to files by inode.
SECCOMP_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
    "mount", "umount2", "pivot_root", "chroot", "setns", "unshare", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "name_to_handle_at", "syslog", "quotactl",
    "fanotify_init", "move_mount", "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr",
)
CLONE_NS_FLAGS = (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
                  0x02000000)  # CLONE_NEWCGROUP
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7


def SCMP_ACT_ERRNO(e: int) -> int:  # noqa: N802 - libseccomp's macro name
    return 0x00050000 | (e & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def seccomp_deny() -> str:
    """Load a seccomp filter (through libseccomp) that refuses SECCOMP_DENY with EPERM, clone
    with any namespace flag with EPERM, and clone3 with ENOSYS (its flags sit in memory a
    filter cannot read; the C library then falls back to clone). Everything else is allowed."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        raise OSError(errno.ENOENT, "libseccomp is not installed") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        denied = []
        for name in SECCOMP_DENY:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not on this architecture
            if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), nr, 0, None) != 0:
                raise OSError(errno.EINVAL, f"seccomp rule for {name} refused")
            denied.append(name)
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in CLONE_NS_FLAGS:
            cmp = _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)
            if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.EPERM), clone, 1, ctypes.byref(cmp)) != 0:
                raise OSError(errno.EINVAL, "seccomp rule for clone refused")
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0 and lib.seccomp_rule_add_array(ctx, SCMP_ACT_ERRNO(errno.ENOSYS), clone3, 0, None) != 0:
            raise OSError(errno.EINVAL, "seccomp rule for clone3 refused")
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)
    return (f"libseccomp deny-list: {len(denied)} syscalls (ptrace, process_vm_*, mount, unshare, "
            "setns, bpf, io_uring, ...) EPERM; clone with namespace flags EPERM; clone3 ENOSYS")


# ------------------------------------------------------------------------------ paths
def python_paths() -> list[str]:
    """Real paths of the Python installation(s) the programs must be able to read."""
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    paths = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix)}
    paths |= {os.path.realpath(sysconfig.get_paths()[k]) for k in keys}
    out = []
    for p in sorted(paths, key=len):  # drop paths inside another kept path
        if os.path.exists(p) and not any(p.startswith(q + os.sep) for q in out):
            out.append(p)
    return out


def _closed_ancestor(path: str) -> str | None:
    """The top-most folder above `path` that others cannot search, if any."""
    parts = path.strip(os.sep).split(os.sep)
    cur = ""
    for part in parts[:-1]:
        cur += os.sep + part
        try:
            if not os.stat(cur).st_mode & 0o001:
                return cur
        except OSError:
            return None
    return None


def _expose(paths: list[str], lc: _Libc) -> list[str]:
    """Behind each closed ancestor of `paths`: an empty tmpfs, with only those paths bound back."""
    groups: dict[str, list[str]] = {}
    for p in paths:
        a = _closed_ancestor(p)
        if a is not None:
            groups.setdefault(a, []).append(p)
    done = []
    for ancestor, inner in groups.items():
        fds = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC)) for p in inner]
        try:
            lc.mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for p, fd in fds:
                os.makedirs(p, mode=0o755, exist_ok=True)
                lc.mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
                done.append(p)
        finally:
            for _, fd in fds:
                os.close(fd)
    return done


# ------------------------------------------------------------------------------ the zygote
def confine_zygote(base_dir_name: str, uid: int | None, fork_into_pid_ns) -> tuple[Isolation, str]:
    """Confine this process (the freshly forked zygote) and return (isolation, job folder).

    `fork_into_pid_ns()` is called after the new PID namespace is requested; it must fork and
    return only in the child (PID 1), the parent waiting for it and exiting with it.
    """
    iso = Isolation()
    lc = libc()
    root = os.geteuid() == 0
    paths = python_paths()  # now: sysconfig imports lazily, which a dropped uid may not manage
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    ns_flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    in_ns = False
    host_mnt_ns = _mount_ns()
    try:
        if root:
            lc.call("unshare", ns_flags)
        else:
            outer_uid, outer_gid = os.geteuid(), os.getegid()
            lc.call("unshare", ns_flags | CLONE_NEWUSER)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{outer_uid} {outer_uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{outer_gid} {outer_gid} 1")
            iso.layers["user_namespace"] = f"maps only uid {outer_uid}"
        # every mount below is made only in a mount namespace of our own, checked here: a
        # mount in the caller's namespace would change the host's /, /proc or /tmp
        in_ns = _mount_ns() != host_mnt_ns
        if not in_ns:
            raise OSError(errno.EPERM, "unshare returned but the mount namespace is unchanged")
        iso.layers["namespaces"] = "mount, network (empty), ipc, uts, pid"
    except OSError as e:
        iso.missing["namespaces"] = str(e)
    if in_ns:
        fork_into_pid_ns()
        iso.is_init = os.getpid() == 1
    else:  # orphans of a job become the zygote's children, to be killed with the job
        try:
            lc.prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError:
            pass
    if in_ns:  # mounts only inside the zygote's own mount namespace: never the host's /, /proc or /tmp
        try:
            lc.mount(None, "/", None, MS_REC | MS_PRIVATE)
            # hidepid=invisible: a program sees only processes it could ptrace, i.e. itself
            # (every other one is not dumpable): not the zygote, not a previous job's
            # processes that are still dying
            for opts, what in (("hidepid=invisible", "only the process itself visible"),
                               ("hidepid=2", "only the process itself visible"), (None, "")):
                try:
                    lc.mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
                    break
                except OSError:
                    if opts is None:
                        raise
            iso.layers["proc"] = "private /proc (this PID namespace" + (f"; {what})" if what else ")")
        except OSError as e:
            iso.missing["proc"] = str(e)
        try:
            lc.mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=512m,mode=1777")
            iso.layers["tmp"] = "private tmpfs /tmp"
        except OSError as e:
            iso.missing["tmp"] = str(e)
    base_dir = os.path.join("/tmp" if "tmp" in iso.layers else _shared_tmp(), base_dir_name)
    os.makedirs(base_dir, mode=0o700, exist_ok=True)
    closed = [p for p in paths if _closed_ancestor(p)]
    if root and uid is not None and closed and not in_ns:
        # without a mount namespace the installation cannot be exposed to another uid, and
        # programs could not import what is not pre-imported: keep root, and say so
        iso.missing["identity"] = (f"programs run as root: {', '.join(closed)} is not readable by other "
                                   "uids and there is no mount namespace to expose it")
    elif root and uid is not None:
        try:
            if in_ns:
                hidden = _expose(paths, lc)
                if hidden:
                    iso.layers["hidden_folders"] = f"only {', '.join(hidden)} visible in {len(hidden)} closed folder(s)"
            os.chown(base_dir, uid, uid)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            iso.uid = uid
            iso.layers["identity"] = f"uid {uid}, no groups"
            if not _can_read(stdlib):
                iso.missing["stdlib_readable"] = "the dropped uid cannot read the standard library"
        except OSError as e:
            iso.missing["identity"] = f"uid drop failed: {e}"
    elif root:
        iso.missing["identity"] = "programs run as root (no uid given)"
    elif "user_namespace" not in iso.layers:
        iso.missing["identity"] = "programs run as the worker's uid"
    try:
        lc.prctl(PR_SET_NO_NEW_PRIVS, 1)
        iso.layers["no_new_privs"] = "set"
    except OSError as e:
        iso.missing["no_new_privs"] = str(e)
    abi = iso.landlock_abi = landlock_abi()
    if abi >= 1:
        try:
            rules = [(p, READ) for p in paths] + [(p, READ) for p in READ_ONLY_PATHS]
            rules += [("/dev/null", FS_READ_FILE | FS_WRITE_FILE), (base_dir, READ | WRITE | FS_TRUNCATE)]
            landlock_restrict(abi, rules, fs_rights(abi), net=True, scoped=True)
            iso.layers["landlock"] = (f"ABI {abi}: reads in the Python installation and system libraries, "
                                      f"writes in {base_dir}, no execve" + (", no TCP" if abi >= 4 else "")
                                      + (", signals scoped" if abi >= 6 else ""))
        except OSError as e:
            iso.missing["landlock"] = str(e)
    else:
        iso.missing["landlock"] = "not supported by this kernel"
    try:
        iso.layers["seccomp"] = seccomp_deny()
    except OSError as e:
        iso.missing["seccomp"] = str(e)
    try:
        lc.prctl(PR_SET_DUMPABLE, 0)  # no ptrace or /proc/<pid>/mem of the zygote by its programs
    except OSError:
        pass
    return iso, base_dir


def _mount_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return None


def _shared_tmp() -> str:
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else "/tmp"


def _can_read(path: str) -> bool:
    try:
        os.listdir(path)
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------ each program
def make_child_confiner(iso: Isolation, base_vm: int, jobdir: str):
    """(confine_child(limits), fds the program process closes after it): the per-program
    step run in each forked program process before the program exists. The nested Landlock
    ruleset (writes only in `jobdir`; no signals out of the program's own domain, so not to
    the zygote) is built here once; each program process only applies it."""
    from retainrl.verify.program import set_limits

    abi = iso.landlock_abi if "landlock" in iso.layers else 0
    own_uid = iso.uid is not None
    drop_caps = "user_namespace" in iso.layers
    nested = None
    if abi:
        try:
            nested = landlock_ruleset(abi, [(jobdir, WRITE | FS_TRUNCATE | READ), ("/dev/null", FS_WRITE_FILE)],
                                      WRITE | FS_TRUNCATE, net=False, scoped=True)
            iso.layers["landlock_per_job"] = "nested layer: writes only in the job folder, signals scoped"
        except OSError as e:
            iso.missing["landlock_per_job"] = str(e)

    def confine_child(limits: dict) -> None:
        lc = libc()
        try:
            lc.prctl(PR_SET_PDEATHSIG, 9)  # die with the zygote
        except OSError:
            pass
        if drop_caps and SYS_CAPSET is not None:
            hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
            data = (ctypes.c_uint32 * 6)()
            lc.syscall(SYS_CAPSET, ctypes.byref(hdr), ctypes.byref(data))
        if nested is not None:
            lc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(nested), ctypes.c_uint32(0))
        set_limits(limits, own_uid, base_vm)

    return confine_child, [] if nested is None else [nested]
