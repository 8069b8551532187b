# ledger_target_defaults(target): warnings (errors with LEDGER_WERROR), x86-64 cmpxchg16b, and the
# sanitizer selection. Applied per target (no global add_compile_options), as the style guide asks.
function(ledger_target_defaults target)
  target_compile_features(${target} PUBLIC cxx_std_20)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wconversion -Wshadow -Wno-sign-conversion>)
  if(LEDGER_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # Flow-sensitive, and wrong at -O2 (GCC 12 on std::optional in emulator.cpp): shown, not fatal.
      target_compile_options(${target} PRIVATE -Wno-error=maybe-uninitialized)
    endif()
  endif()
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
    # GCC 12 at -O3 reports std::string concatenation as overlapping memcpy (GCC bug 105651).
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-restrict>)
  endif()
  if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
    # The per-account period word is a 16-byte compare-and-swap (cmpxchg16b).
    target_compile_options(${target} PRIVATE -mcx16)
  endif()
  if(LEDGER_SANITIZE)
    string(REPLACE ";" "," _san "${LEDGER_SANITIZE}")
    target_compile_options(${target} PRIVATE -fsanitize=${_san} -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${_san})
    if("thread" IN_LIST LEDGER_SANITIZE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # TSan does not model stand-alone fences; every access they order is atomic anyway.
      target_compile_options(${target} PRIVATE -Wno-tsan)
    endif()
  endif()
endfunction()
