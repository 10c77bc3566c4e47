"""Training photos for the framing mixture: CelebA identities below --heldout-from (default 120; ids
120-149 are python/evaluate_framing.py's held-out set), each photo with its dlib 68-point landmarks,
so that the trainer's FramingSampler can cut any framing from it at run time.

    python python/prepare_framing.py --tar ../shared/data/celeba-ids000-149.tar --out data/celeba-framing

With --heldout it keeps the other identities (ids >= --heldout-from) instead: the held-out half of the
framing mixture that python/evaluate_mixture_fd.py compares generator samples against.

    python python/prepare_framing.py --tar ../shared/data/celeba-ids000-149.tar --out data/celeba-framing-heldout --heldout

Writes OUT/photos.npz: photos uint8 [N, H, W, 3] (CelebA "aligned" photos are all 218x178),
landmarks float32 [N, 68, 2] (pixel-index coordinates), names. Photos where dlib finds no face, or
more than one, are left out. Needs dlib (pip install 'pulse_ext[align]'). Never commit the output.
"""
import argparse
import os
import sys
import tarfile
import time

import numpy as np


def celeba_photos(tar):
    """(identity, member) for every photo of an open CelebA tar (``celeba/celeb_<id>/*.jpg``), by name."""
    members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
    return [(int(m.name.split("/")[1].removeprefix("celeb_")), m) for m in members]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tar", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--heldout-from", type=int, default=120)
    ap.add_argument("--heldout", action="store_true",
                    help="keep the held-out identities (ids >= --heldout-from) instead of the training ones")
    args = ap.parse_args(argv)
    from PIL import Image

    from pulse_ext.align import FaceAligner

    aligner = FaceAligner()
    photos, landmarks, names = [], [], []
    skipped = 0
    t0 = time.perf_counter()
    with tarfile.open(args.tar) as tar:
        for ident, member in celeba_photos(tar):
            if (ident >= args.heldout_from) != args.heldout:
                continue
            image = Image.open(tar.extractfile(member)).convert("RGB")
            found = aligner.landmarks(image)
            if len(found) != 1 or (photos and image.size != (photos[0].shape[1], photos[0].shape[0])):
                skipped += 1
                continue
            photos.append(np.asarray(image, dtype=np.uint8))
            landmarks.append(found[0][1].astype(np.float32))
            names.append(member.name)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "photos.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, photos=np.stack(photos), landmarks=np.stack(landmarks), names=np.asarray(names))
    os.replace(tmp, path)
    print(f"wrote {path}: {len(photos)} photos of ids {'>=' if args.heldout else '<'} {args.heldout_from} ({skipped} without exactly one face), "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
