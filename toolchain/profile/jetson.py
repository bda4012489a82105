"""Jetson telemetry: detection, `tegrastats` sampling (RAM and rail power), `nvpmodel -q`.

A Jetson is recognised by `/etc/nv_tegra_release` (it also names the L4T release). tegrastats
prints one line per interval, e.g. on Orin (JetPack 6):

    RAM 2456/15388MB (lfb 2948x4MB) SWAP 0/7694MB (cached 0MB) CPU [2%@729,1%@729] EMC_FREQ 0%@2133
    GR3D_FREQ 0%@[305,305] CPU@46.25C VDD_IN 4121mW/4121mW VDD_CPU_GPU_CV 480mW/480mW VDD_SOC 1281mW/1281mW

and on Xavier (JetPack 4/5) the rails read `VDD_IN 3791/3791` or `POM_5V_IN 3238/3238` (current /
average mW, without units). `parse_tegrastats_line` understands all three.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Optional

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)([kMG]B)")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}
# The rail that measures the whole module's input power, newest naming first.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_UNIT_MB = {"kB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def is_jetson(release_file: Path = TEGRA_RELEASE) -> bool:
    return release_file.is_file()


def l4t_release(release_file: Path = TEGRA_RELEASE) -> Optional[str]:
    """'R36 (release), REVISION: 3.0' -> '36.3.0'; None off a Jetson."""
    if not release_file.is_file():
        return None
    text = release_file.read_text(errors="replace")
    major = re.search(r"R(\d+)", text)
    rev = re.search(r"REVISION:\s*([\d.]+)", text)
    if not major:
        return text.strip().splitlines()[0] if text.strip() else None
    return f"{major.group(1)}.{rev.group(1)}" if rev else major.group(1)


def parse_tegrastats_line(line: str) -> dict:
    """RAM used/total (MB), GPU load (%) and every power rail's current/average mW in one line."""
    out: dict = {"rails_mw": {}}
    ram = _RAM.search(line)
    if ram:
        scale = _UNIT_MB[ram.group(3)]
        out["ram_used_mb"] = int(ram.group(1)) * scale
        out["ram_total_mb"] = int(ram.group(2)) * scale
    gr3d = _GR3D.search(line)
    if gr3d:
        out["gpu_load_pct"] = int(gr3d.group(1))
    for name, current, average in _RAIL.findall(line):
        if name in _NOT_RAILS:
            continue
        out["rails_mw"][name] = {"current": int(current), "average": int(average)}
    for rail in _INPUT_RAILS:
        if rail in out["rails_mw"]:
            out["input_power_mw"] = out["rails_mw"][rail]["current"]
            out["input_rail"] = rail
            break
    return out


def summarize_tegrastats(samples: list[dict]) -> dict:
    """Peak RAM and mean / peak input power over a run's samples."""
    ram = [s["ram_used_mb"] for s in samples if "ram_used_mb" in s]
    power = [s["input_power_mw"] for s in samples if "input_power_mw" in s]
    out: dict = {"samples": len(samples)}
    if ram:
        out["ram_used_peak_mb"] = max(ram)
        out["ram_total_mb"] = samples[0].get("ram_total_mb")
    if power:
        out["power_mean_mw"] = sum(power) / len(power)
        out["power_peak_mw"] = max(power)
        out["power_rail"] = next(s["input_rail"] for s in samples if "input_rail" in s)
    return out


class TegrastatsSampler:
    """Runs `tegrastats --interval MS` while the context is open; `.summary()` afterwards.

    Off a Jetson (or without the binary) it does nothing and `.summary()` says why.
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats"):
        self.interval_ms = interval_ms
        self.executable = shutil.which(executable)
        self.samples: list[dict] = []
        self._proc: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def __enter__(self) -> "TegrastatsSampler":
        if self.executable is None:
            return self
        self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append(parse_tegrastats_line(line))

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)

    def summary(self) -> dict:
        if self.executable is None:
            return {"available": False, "reason": "tegrastats not found (not a Jetson)"}
        return {"available": True, **summarize_tegrastats(self.samples)}


def parse_nvpmodel(output: str) -> Optional[str]:
    """'NV Power Mode: MAXN\\n0' -> 'MAXN (mode 0)'."""
    name = re.search(r"NV Power Mode:\s*(.+)", output)
    if not name:
        return None
    mode_id = re.search(r"^\s*(\d+)\s*$", output, re.MULTILINE)
    return f"{name.group(1).strip()} (mode {mode_id.group(1)})" if mode_id else name.group(1).strip()


def power_mode() -> Optional[str]:
    """The current nvpmodel power mode, or None where nvpmodel is missing."""
    exe = shutil.which("nvpmodel")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvpmodel(out.stdout)


def jetson_info() -> dict:
    if not is_jetson():
        return {"is_jetson": False}
    return {"is_jetson": True, "l4t": l4t_release(), "power_mode": power_mode()}
