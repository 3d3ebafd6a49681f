"""Integrations with other libraries (each imported only when used; the libraries are optional extras).

- `elasticast_kernels.integrations.transformers`: our varlen attention as a Hugging Face
  ``attn_implementation`` (``pip install "elasticast-kernels[hf]"``).
"""
