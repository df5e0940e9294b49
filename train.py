"""Pre-train or fine-tune PSD-CLIP: the entry point into `modeling_psdclip.training`.

    python train.py                              # built-in default: tiny model, noisy synthetic scenes, <10 min on CPU
    accelerate launch train.py --config configs/vit-b-32.yaml   # any Accelerate launch: multi-GPU, multi-node
    python train.py --init-from FOLDER --data my_pairs.csv      # fine-tune a PSD-CLIP or stock CLIP folder
    python train.py --resume latest                             # continue a killed run exactly where it stopped

`--help` lists every option. `python -m modeling_psdclip.training` and `psdclip-train` do the same.
"""

import sys

from modeling_psdclip.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
