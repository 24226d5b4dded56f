#!/usr/bin/env bash
# Your settings for webui.sh (this file is read by it; edit freely).
# Flags for webui.py, e.g. "--listen --gradio-auth me:secret --api"
#export COMMANDLINE_ARGS=""
# How torch is installed, e.g. a CPU-only build:
#export TORCH_COMMAND="pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#export PYTHON=python3
#export VENV_DIR=venv
