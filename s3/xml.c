/* xml.c: being written */
#include "internal.h"
