@echo off
rem sdweb launcher (Windows): first run creates venv\ and installs everything; later runs start at once.
rem Settings go in webui-user.bat (COMMANDLINE_ARGS, TORCH_COMMAND, PYTHON, VENV_DIR).
setlocal enabledelayedexpansion
cd /d "%~dp0"
if exist webui-user.bat call webui-user.bat
if not defined PYTHON set PYTHON=python
if not defined VENV_DIR set VENV_DIR=venv
if not defined TORCH_COMMAND (
    where nvidia-smi >nul 2>nul
    if !errorlevel! == 0 (
        set "TORCH_COMMAND=pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    ) else (
        set "TORCH_COMMAND=pip install torch==2.13.0"
    )
)
%PYTHON% --version >nul 2>nul || (echo error: %PYTHON% not found; install Python 3.10 or newer & exit /b 1)
if not exist "%VENV_DIR%\Scripts\python.exe" (
    echo Creating the virtual environment in %VENV_DIR% ...
    %PYTHON% -m venv "%VENV_DIR%" || exit /b 1
)
call "%VENV_DIR%\Scripts\activate.bat"
set "STAMP=%VENV_DIR%\.sdweb-installed"
for /f "usebackq delims=" %%H in (`certutil -hashfile pyproject.toml SHA256 ^| findstr /v ":"`) do set "PYHASH=%%H"
set "WANT=!TORCH_COMMAND!|!PYHASH!"
set "HAVE="
if exist "%STAMP%" set /p HAVE=<"%STAMP%"
if not "!HAVE!" == "!WANT!" (
    echo Installing torch: !TORCH_COMMAND!
    python -m pip install -q --upgrade pip
    !TORCH_COMMAND! || exit /b 1
    echo Installing sdweb and its dependencies ...
    python -m pip install -q -e . || exit /b 1
    (echo !WANT!)>"%STAMP%"
)
python webui.py %COMMANDLINE_ARGS% %*
