#!/bin/sh
# keepalived vrrp_script: exit 0 while this machine can serve, non-zero otherwise.
# Runs as the unprivileged keepalived_script user, so it only reads state.
# The service this lab protects is SSH: healthy while sshd is active.
exec systemctl is-active --quiet ssh
