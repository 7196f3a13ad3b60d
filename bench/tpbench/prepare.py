"""Before a run: the peers and tools installed with apt when missing, tinyproxy and the bench's
programs built in Release with CMake."""
import importlib.util
import os
import shutil
import subprocess

from . import targets

# (is it there?, Debian package)
WANTED = (
    (lambda: targets.peer_program("haproxy"), "haproxy"),
    (lambda: targets.peer_program("nginx"), "nginx-light"),
    (lambda: os.path.exists(targets.NGINX_STREAM), "libnginx-mod-stream"),
    (lambda: targets.peer_program("socat"), "socat"),
    (lambda: targets.peer_program("rinetd"), "rinetd"),
    (lambda: targets.peer_program("microsocks"), "microsocks"),
    (lambda: shutil.which("iperf3"), "iperf3"),
    (lambda: shutil.which("curl"), "curl"),
    (lambda: shutil.which("cmake"), "cmake"),
    (lambda: shutil.which("g++"), "g++"),
    (lambda: shutil.which("make"), "make"),
    (lambda: shutil.which("taskset"), "util-linux"),
    (lambda: has_matplotlib(), "python3-matplotlib"),  # report.py --charts
)
REQUIRED = ("cmake", "g++", "taskset")


def has_matplotlib():
    """In this interpreter, or in Debian's (where python3-matplotlib puts it)."""
    if importlib.util.find_spec("matplotlib"):
        return True
    return os.path.exists("/usr/bin/python3") and subprocess.run(
        ["/usr/bin/python3", "-c", "import matplotlib"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL).returncode == 0


def install_missing(log, work):
    want = [pkg for present, pkg in WANTED if not present()]
    if want:
        apt_install(want, work, log, "missing peers are reported")


def apt_install(want, work, log, otherwise):
    """apt-get installs the packages WANT, one by one, logging to WORK/apt.log, with their
    services kept from starting. Without root or apt-get it says so, and OTHERWISE (what
    happens instead)."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        log(f"cannot install {' '.join(want)} (needs root and apt-get); {otherwise}")
        return
    log(f"installing {' '.join(want)}")
    # The peers' packages would start system services: refuse that for the install, unless a
    # policy is already in place (then it is left as it is).
    policy = "/usr/sbin/policy-rc.d"
    made_policy = False
    if not os.path.exists(policy):
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        with open(os.path.join(work, "apt.log"), "ab") as apt_log:
            subprocess.run(["apt-get", "update", "-qq"], stdout=apt_log, stderr=apt_log, env=env,
                           timeout=600)
            # One by one, so a package that cannot be had leaves the others installed.
            for pkg in want:
                if subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                   pkg], stdout=apt_log, stderr=apt_log, env=env,
                                  timeout=900).returncode:
                    log(f"apt-get install {pkg} failed")
    finally:
        if made_policy:
            os.remove(policy)


def check_required():
    missing = [tool for tool in REQUIRED if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"run.py: {' '.join(missing)} required")


def cmake_build(root, build_dir, targets_wanted, log_path, extra=()):
    """Configures BUILD_DIR once (Release, no tests, the bench's programs on) and builds
    TARGETS_WANTED; `cmake --build` re-runs the configure step itself when CMakeLists change.
    Raises with the build's log when it fails."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    configured = False
    if os.path.exists(cache):
        with open(cache, errors="replace") as f:
            configured = "TINYPROXY_BUILD_BENCH:BOOL=ON" in f.read()
    with open(log_path, "ab") as log:
        steps = [] if configured else [[
            "cmake", "-S", root, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
            "-DTINYPROXY_BUILD_TESTS=OFF", "-DTINYPROXY_BUILD_BENCH=ON", *extra]]
        steps.append(["cmake", "--build", build_dir, "-j2", "--target", *targets_wanted])
        for step in steps:
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT).returncode:
                with open(log_path, errors="replace") as f:
                    raise SystemExit(f"{f.read()}\nrun.py: the build failed ({' '.join(step)})")


def build(root, work, log, need_floor, need_stage, need_portable):
    """Builds what the mode needs; returns {key: path} of the programs. BENCH_BUILD_DIR names
    another build tree configured with TINYPROXY_BUILD_BENCH=ON (CI's release-tests one) to
    build in instead of build/bench."""
    build_dir = os.environ.get("BENCH_BUILD_DIR") or os.path.join(root, "build", "bench")
    wanted = ["tinyproxy_cli", "tinyproxy_bench_load"]
    if need_floor:
        wanted.append("tinyproxy_bench_floor")
    if need_stage:
        wanted.append("tinyproxy_bench_stage_proxy")
    programs = ", ".join(w[len("tinyproxy_bench_"):] for w in wanted[1:])
    log(f"building tinyproxy (Release) and {programs} in {build_dir}")
    cmake_build(root, build_dir, wanted, os.path.join(work, "build.log"))
    bench_dir = os.path.join(build_dir, "bench")
    programs = {
        "load": os.path.join(bench_dir, "load"),
        "floor": os.path.join(bench_dir, "floor"),
        "stage_proxy": os.path.join(bench_dir, "stage_proxy"),
        "tp": os.environ.get("TINYPROXY") or os.path.join(build_dir, "examples", "tinyproxy"),
    }
    if os.environ.get("BASELINE"):
        programs["baseline"] = os.environ["BASELINE"]
    if need_portable:
        # The portable paths as another platform gets them: poll(2), and copies, not splice.
        portable = os.path.join(root, "build", "bench-portable")
        log("building the portable tinyproxy (TINYPROXY_NO_EPOLL, TINYPROXY_NO_SPLICE) in "
            + portable)
        cmake_build(root, portable, ["tinyproxy_cli"], os.path.join(work, "build-portable.log"),
                    ["-DCMAKE_CXX_FLAGS=-DTINYPROXY_NO_EPOLL -DTINYPROXY_NO_SPLICE"])
        programs["portable"] = os.path.join(portable, "examples", "tinyproxy")
    return programs
