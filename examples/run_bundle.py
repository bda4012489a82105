"""Run a deploy bundle on a camera, a video or a folder of images and overlay the mask or count.

    python examples/run_bundle.py deploy/cpu --source images/ --out overlays/   # a folder (no OpenCV needed)
    python examples/run_bundle.py deploy/jetson-orin-nx-16gb --source 0          # camera 0 (needs OpenCV)
    python examples/run_bundle.py deploy/cpu --source clip.mp4 --show            # a video (needs OpenCV)
    python examples/run_bundle.py deploy/cpu --source images/ --pin $(cut -c1-64 deploy/cpu/manifest.sha256)

Segmentation: the class map is blended over the frame; counting: the count is written on it;
classification: the top class. Camera/video frames stay BGR as OpenCV gives them and are passed with
`bgr=True`. `--pin` refuses any bundle but the one whose manifest.json has that sha256. Prints
latency statistics at the end.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from toolchain.errors import ToolchainError
from toolchain.runtime import load

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(40, 255, (max(n, 1), 3), dtype=np.uint8)


def overlay(frame_rgb: np.ndarray, pred, class_names: list[str]) -> np.ndarray:
    """The frame with the prediction drawn on it (RGB uint8)."""
    image = Image.fromarray(frame_rgb)
    if pred.class_map is not None:  # already at the frame's resolution
        mask = Image.fromarray(palette(len(class_names))[pred.class_map].astype(np.uint8))
        image = Image.blend(image, mask, 0.45)
        text = ", ".join(pred.class_names(class_names))
    elif pred.count is not None:
        text = f"count: {pred.count:.1f}"
    else:
        text = f"{pred.topk[0][0]} ({pred.topk[0][1]:.0%})"
    ImageDraw.Draw(image).text((5, 5), text, fill=(255, 255, 255))
    return np.asarray(image)


def frames_from_folder(folder: Path):
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        with Image.open(path) as img:
            yield path.name, np.asarray(img.convert("RGB")), False


def frames_from_capture(source: str):
    try:
        import cv2
    except ImportError:
        raise ToolchainError("camera and video input need OpenCV: pip install opencv-python "
                             "(or pass --source a folder of images)") from None
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise ToolchainError(f"cannot open camera/video {source}")
    index = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        yield f"frame_{index:06d}.png", bgr, True
        index += 1
    cap.release()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--source", required=True, help="folder of images, video file, or camera index")
    parser.add_argument("--out", help="folder to write overlays into")
    parser.add_argument("--show", action="store_true", help="show a window (OpenCV)")
    parser.add_argument("--precision", help="bundle precision (default: the manifest's)")
    parser.add_argument("--pin", help="expected sha256 of the bundle's manifest.json (refuse any other bundle)")
    args = parser.parse_args(argv)
    try:
        model = load(args.bundle, precision=args.precision, expect_manifest_sha256=args.pin)
        print(f"{model}\nmanifest sha256 {model.manifest_sha256} (pin it with --pin)")
        model.warmup(0.5)
        src = Path(args.source)
        frames = frames_from_folder(src) if src.is_dir() else frames_from_capture(args.source)
        out = Path(args.out) if args.out else None
        if out:
            out.mkdir(parents=True, exist_ok=True)
        for name, frame, is_bgr in frames:
            pred = model(frame, bgr=is_bgr)
            drawn = overlay(frame[:, :, ::-1].copy() if is_bgr else frame, pred, model.class_names)
            if out:
                Image.fromarray(drawn).save(out / Path(name).with_suffix(".png").name)
            if args.show:
                import cv2

                cv2.imshow("acsl", drawn[:, :, ::-1])
                if cv2.waitKey(1) == 27:
                    break
        stats = model.latency_stats()
        print(f"{stats['runs']} frames: median {stats['median_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, "
              f"{stats['throughput_qps']:.1f} fps (network only)")
    except ToolchainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
