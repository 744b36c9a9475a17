/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * client: qctl, the command-line client. Needs only common/. Single-threaded.
 */

#include "common.h"

/*
 * The socket qctl talks to: QUANTD_SOCKET, else the user daemon's socket if it exists, else the system
 * daemon's. Returns a string the caller frees.
 */
int client_socket_path(char **ret);
