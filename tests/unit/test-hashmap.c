/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include "hashmap.h"
#include "macro.h"
#include "tests.h"

int main(void) {
        Hashmap *h = hashmap_new();
        static char keys[5000][16];
        void *v;
        size_t seen = 0;

        for (int i = 0; i < 5000; i++) {
                snprintf(keys[i], sizeof(keys[i]), "k%d", i);
                CHECK_EQ_INT(hashmap_put(h, keys[i], keys[i]), 0);
        }
        CHECK_EQ_INT(hashmap_put(h, "k7", keys[7]), -EEXIST);
        CHECK_EQ_INT(hashmap_size(h), 5000);
        CHECK(hashmap_get(h, "k4999") == keys[4999]);
        CHECK(hashmap_get(h, "k5000") == NULL);

        /* Removing the current entry while iterating is allowed. */
        HASHMAP_FOREACH(v, h) {
                seen++;
                if (strcmp(v, "k100") >= 0)
                        CHECK(hashmap_remove(h, v) == v);
        }
        CHECK_EQ_INT(seen, 5000);
        CHECK(hashmap_get(h, "k100") == NULL);
        CHECK(hashmap_get(h, "k0") == keys[0]);
        hashmap_free(h);
        return tests_finish("test-hashmap");
}
