# Sourced by main.sh and test.sh: the options of the Release build tree, set in full by both scripts so
# that whichever runs first, the other finds the cache it expects (no option left to a stale cache).
release_cmake_args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS= -DSPARSE_FFN_BUILD_TESTS=ON
                    -DSPARSE_FFN_BUILD_EXAMPLES=ON -DSPARSE_FFN_BUILD_BENCH=ON -DSPARSE_FFN_SANITIZE=OFF
                    -DSPARSE_FFN_FUZZ=OFF -DSPARSE_FFN_NATIVE=OFF -DSPARSE_FFN_CUDA=AUTO -DSPARSE_FFN_OPENMP=ON)
