"""Projected compression trained with the standard Hugging Face Trainer: text files in, vanilla model out.

    python examples/train_projected_compression.py \
        --train_file ../shared/data/wikitext-2/valid.txt --target_params 0.5 --importance activation \
        --output_dir out/pc --max_steps 200 --per_device_train_batch_size 4 --gradient_accumulation_steps 8

The script is ``hf_projcomp.training.script`` (also ``projcomp train``): HfArgumentParser over
model/data/compression arguments plus every ``TrainingArguments`` flag, ``get_projcomp_model`` for
the initial selection, ``ProjCompTrainer`` for training (``accelerate launch`` for several
processes), and ``save_merged`` for the verified vanilla checkpoint in ``<output_dir>/merged``.
Copy that module to adapt the data pipeline.
"""

from hf_projcomp.training.script import main

if __name__ == "__main__":
    main()
