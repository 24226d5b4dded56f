@echo off
rem Your settings for launch.bat (edit freely).
rem Flags for webui.py, e.g. --listen --gradio-auth me:secret --api
set COMMANDLINE_ARGS=
rem How torch is installed (default: CUDA build when an NVIDIA GPU is present):
rem set TORCH_COMMAND=pip install torch==2.13.0
rem set PYTHON=python
rem set VENV_DIR=venv
