/* SPDX-License-Identifier: MIT */
#include "check.h"
static void placeholder(void) { CHECK(0); }
CHECK_MAIN(placeholder)
