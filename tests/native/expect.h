// A tiny test harness for the C++ tests run by CTest: EXPECT records a failure and carries on,
// run() executes the cases and turns the failure count into the exit status.
#pragma once

#include <cstdio>
#include <exception>
#include <initializer_list>
#include <string>

namespace phasenets::testing {

inline int& failures() {
  static int count = 0;
  return count;
}

#define EXPECT(condition)                                                                 \
  do {                                                                                    \
    if (!(condition)) {                                                                   \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #condition);       \
      ++::phasenets::testing::failures();                                                 \
    }                                                                                     \
  } while (0)

// Whether fn throws an Exception whose message contains `fragment`.
template <typename Exception, typename Fn>
bool throws(Fn&& fn, const std::string& fragment) {
  try {
    fn();
  } catch (const Exception& error) {
    const bool found = std::string(error.what()).find(fragment) != std::string::npos;
    if (!found) std::fprintf(stderr, "unexpected message: %s\n", error.what());
    return found;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "unexpected exception type: %s\n", error.what());
    return false;
  }
  return false;
}

struct Case {
  const char* name;
  void (*run)();
};

inline int run(std::initializer_list<Case> cases) {
  for (const Case& test : cases) {
    const int before = failures();
    try {
      test.run();
    } catch (const std::exception& error) {
      std::fprintf(stderr, "%s: unexpected exception: %s\n", test.name, error.what());
      ++failures();
    }
    std::printf("%s %s\n", failures() == before ? "ok  " : "FAIL", test.name);
  }
  return failures() == 0 ? 0 : 1;
}

}  // namespace phasenets::testing
