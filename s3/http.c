/* http.c: being written */
#include "internal.h"
