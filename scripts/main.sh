#!/usr/bin/env bash
# The main job: the CPU demo (a small GPT trained from scratch with PreMemorizationCallback;
# TensorBoard logs and a report with figures in runs/demo/, a few minutes on 2 cores).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
premem demo --output "${1:-runs/demo}"
