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

# Kernels whose source prefetches on every level they are compiled for (mangled-name pieces).
set(kernels "10dots_lanes" "14axpy_rows_vnni")
set(found 0)
set(failed "")
set(fn "")
set(n 0)
macro(close_function)
  set(_listed FALSE)
  foreach(k IN LISTS kernels)
    if(fn MATCHES "${k}")
      set(_listed TRUE)
    endif()
  endforeach()
  if(_listed)
    math(EXPR found "${found} + 1")
    message(STATUS "${n} prefetch instructions in ${fn}")
    if(n EQUAL 0)
      list(APPEND failed "${fn}")
    endif()
  endif()
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
if(found EQUAL 0)
  message(FATAL_ERROR "none of the kernels (${kernels}) is in ${BINARY}")
endif()
if(failed)
  message(FATAL_ERROR "kernels compiled without their prefetches: ${failed}")
endif()
message(STATUS "${found} kernels checked, each with its prefetches")
