// kernels/check.h — SPECMOE_CHECK: abort on a broken invariant (kernels/README.md, Errors), naming
// the condition, a message, the file and the line. Never for anything a request or a file can
// cause: those are validated first and answered with a Status.
#ifndef SPECMOE_KERNELS_CHECK_H_
#define SPECMOE_KERNELS_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define SPECMOE_CHECK(cond, msg)                                                        \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, \
                   msg);                                                                \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

#endif  // SPECMOE_KERNELS_CHECK_H_
