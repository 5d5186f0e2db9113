/* creds.c: being written */
#include "internal.h"
