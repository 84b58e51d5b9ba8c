# The int8 micro-kernels keep their software prefetches in the compiled code. GCC treats _mm_prefetch
# (__builtin_prefetch) as free of side effects and deletes every call to a function made only of
# prefetches (a helper loop or lambda it does not inline: it finds it `const`), which left the q8/q4
# key pass (dots_lanes) with no prefetch instruction at all until 2026-12-04 (docs/benchmarks.md,
# stop 44); simd.hpp now prefetches through an asm volatile. This test disassembles BINARY and fails
# when a listed kernel of an x86 level has no prefetch instruction, or when none of them is found (so
# it cannot pass on a binary without them).
#
#   cmake -DOBJDUMP=<objdump> -DBINARY=<library or executable> -DWORK=<scratch file> -P check_prefetch.cmake
foreach(v OBJDUMP BINARY WORK)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "check_prefetch.cmake: -D${v}=... is required")
  endif()
endforeach()
execute_process(COMMAND ${OBJDUMP} -d --no-show-raw-insn ${BINARY} OUTPUT_FILE ${WORK} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OBJDUMP} -d ${BINARY} failed: ${rc}")
endif()
# Function headers ("0000000000001234 <_ZN...>:") and prefetch instructions only.
file(STRINGS ${WORK} lines REGEX "^[0-9a-f]+ <.*>:$|prefetch")
file(REMOVE ${WORK})

# Kernels whose source prefetches on every level they are compiled for (mangled-name pieces). A build
# that does not inline everything (the sanitizer build) emits a kernel's lambdas as local symbols of
# their own ("_ZZ" + the kernel's name without "_Z" + "E..."; "_ZZZ" for a lambda in a lambda): they
# count toward their kernel. The name must be the function's own, right after impl<level>'s template
# arguments ("EE" + the piece): a helper instantiated with one of the kernel's lambdas (value_coefs,
# "...EE11value_coefsI...EZNS6_14axpy_rows_vnni...") carries the kernel's name in its template arguments
# and is no kernel (the sanitizer build emits it as a function of its own, without prefetches).
set(kernels "10dots_lanes" "14axpy_rows_vnni")
set(names "")
set(fn "")
set(n 0)
macro(close_function)
  foreach(k IN LISTS kernels)
    if(fn MATCHES "EE${k}")
      string(MD5 _key "${fn}")
      set(count_${_key} ${n})
      list(APPEND names "${fn}")
      break()
    endif()
  endforeach()
endmacro()
foreach(line IN LISTS lines)
  if(line MATCHES "^[0-9a-f]+ <(.*)>:$")
    set(next "${CMAKE_MATCH_1}")  # before close_function's MATCHES overwrite CMAKE_MATCH_1
    if(NOT fn STREQUAL "")
      close_function()
    endif()
    set(fn "${next}")
    set(n 0)
  elseif(line MATCHES "prefetch")
    math(EXPR n "${n} + 1")
  endif()
endforeach()
if(NOT fn STREQUAL "")
  close_function()
endif()

set(found 0)
set(failed "")
foreach(top IN LISTS names)
  if(NOT top MATCHES "^_ZN")  # a local symbol: counted with its kernel below
    continue()
  endif()
  set(total 0)
  foreach(sym IN LISTS names)
    # The kernel itself, or a local symbol whose owner's encoding is exactly the kernel's: "_ZZ" + the
    # kernel's name without "_Z" + "E" (a plain prefix match would also pool an overload whose
    # parameter list extends this one's).
    string(REGEX REPLACE "^_ZZ+" "_Z" owner "${sym}")
    string(FIND "${owner}" "${top}E" at)
    if(sym STREQUAL top OR (NOT sym MATCHES "^_ZN" AND at EQUAL 0))
      string(MD5 _key "${sym}")
      math(EXPR total "${total} + ${count_${_key}}")
    endif()
  endforeach()
  math(EXPR found "${found} + 1")
  message(STATUS "${total} prefetch instructions in ${top} (with its local symbols)")
  if(total EQUAL 0)
    list(APPEND failed "${top}")
  endif()
endforeach()
if(found EQUAL 0)
  message(FATAL_ERROR "none of the kernels (${kernels}) is in ${BINARY}")
endif()
if(failed)
  message(FATAL_ERROR "kernels compiled without their prefetches: ${failed}")
endif()
message(STATUS "${found} kernels checked, each with its prefetches")
