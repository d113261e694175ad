# SPDX-License-Identifier: MIT
# Warnings.cmake - the warning set of docs/house-style.md, per compiler.
function(sluice_set_warnings target)
  target_compile_options(${target} PRIVATE
    -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes
    -Wmissing-prototypes -Wmissing-declarations -Wold-style-definition
    -Wredundant-decls -Wnested-externs -Wpointer-arith -Wcast-qual
    -Wwrite-strings -Wvla -Wformat=2 -Wundef -Wconversion
    -Wsign-conversion -Wimplicit-fallthrough -Wnull-dereference
    -Wdouble-promotion -fno-common)
  if(CMAKE_C_COMPILER_ID STREQUAL "GNU")
    target_compile_options(${target} PRIVATE
      -Wcast-align=strict -Wlogical-op -Wduplicated-cond
      -Wduplicated-branches -Wjump-misses-init -Walloca)
  elseif(CMAKE_C_COMPILER_ID MATCHES "Clang")
    target_compile_options(${target} PRIVATE
      -Wcast-align -Wcomma -Wshorten-64-to-32 -Wconditional-uninitialized
      -Wunreachable-code)
  endif()
  if(SLUICE_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
