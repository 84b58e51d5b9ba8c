// Registers BM_sparse_hash_<dtype>/... (one translation unit per selector).
#include "bench_common.hpp"

namespace bench {

void register_sparse_hash(const std::string& act) {
  if (act == "relu") {
    register_sparse<sf::select::hash, float, sf::act::relu>("hash", "f32");
    register_sparse<sf::select::hash, sf::bfloat16_t, sf::act::relu>("hash", "bf16");
    register_sparse<sf::select::hash, sf::half_t, sf::act::relu>("hash", "f16");
  } else {
    register_sparse<sf::select::hash, float, sf::act::silu>("hash", "f32");
    register_sparse<sf::select::hash, sf::bfloat16_t, sf::act::silu>("hash", "bf16");
    register_sparse<sf::select::hash, sf::half_t, sf::act::silu>("hash", "f16");
  }
}

}  // namespace bench
