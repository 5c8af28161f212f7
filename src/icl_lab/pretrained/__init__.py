"""The pretrained stage: import models trained elsewhere, from local files only, into icl-lab run
directories, so that `analyze`, `ablate` and `report` work on them unchanged. Between `run` and
`measure` in the flow data -> model -> train -> run -> pretrained -> measure -> ...

Families: GPT-2, GPT-NeoX / Pythia and Llama (Hugging Face folders with config.json and
*.safetensors or pytorch_model*.bin). Logits match Hugging Face `transformers` to 1e-4 in fp32
(tested on random small configs). `load_model` reads the same sources (and run directories)
straight into a `Transformer`, with its tokenizer attached. `export_hf` goes the other way: a run's
model as a Hugging Face GPT-2, GPT-NeoX or Llama folder that transformers loads."""

from icl_lab.pretrained.export_hf import export_hf
from icl_lab.pretrained.families import FAMILIES
from icl_lab.pretrained.gguf_file import read_gguf
from icl_lab.pretrained.hf import BUILTINS, builtin_available, builtin_model, import_model, read_hf_folder
from icl_lab.pretrained.load import load_model

__all__ = ["BUILTINS", "FAMILIES", "builtin_available", "builtin_model", "export_hf", "import_model", "load_model", "read_gguf",
           "read_hf_folder"]
