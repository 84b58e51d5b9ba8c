// Registers BM_sparse_avg_k_<dtype>/... (one translation unit per selector).
#include "bench_common.hpp"

namespace bench {

void register_sparse_avg_k(const std::string& act) {
  if (act == "relu") {
    register_sparse<sf::select::avg_k, float, sf::act::relu>("avg_k", "f32");
    register_sparse<sf::select::avg_k, sf::bfloat16_t, sf::act::relu>("avg_k", "bf16");
    register_sparse<sf::select::avg_k, sf::half_t, sf::act::relu>("avg_k", "f16");
  } else {
    register_sparse<sf::select::avg_k, float, sf::act::silu>("avg_k", "f32");
    register_sparse<sf::select::avg_k, sf::bfloat16_t, sf::act::silu>("avg_k", "bf16");
    register_sparse<sf::select::avg_k, sf::half_t, sf::act::silu>("avg_k", "f16");
  }
}

}  // namespace bench
