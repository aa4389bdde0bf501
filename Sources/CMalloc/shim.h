// glibc's malloc.h (mallopt); other C libraries have no such settings.
#if __has_include(<malloc.h>)
#include <malloc.h>
#endif
