"""Train (or load) every rung of the profile's self-distilled ImageNet ladder and time each.

    python scripts/build_ladder.py [profile] [radius ...]

The rungs land in the run cache (``NBS_CACHE``), where chapters 5-7 find them.
"""

import sys
import time

from nbs_lib.core.profiles import get_profile
from nbs_lib.studies.imagenet_sources import robust_imagenet_source

profile = get_profile(sys.argv[1] if len(sys.argv) > 1 else "mini")
radii = [float(r) for r in sys.argv[2:]] or list(profile.ladder_radii)
for radius in radii:
    started = time.time()
    rung = robust_imagenet_source(radius, profile, progress=True)
    print(f"rung {radius:g}/255: {time.time() - started:.0f} s; clean agreement {rung.clean_accuracy:.3f}, "
          f"robust {rung.robust_accuracy:.3f}", flush=True)
