/* sigv4.c: being written */
#include "internal.h"
