/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stddef.h>

/* A small string-keyed hash table with separate chaining. Keys are not copied: they must live as
 * long as the entry (typically the key is a field of the value). */
typedef struct Hashmap Hashmap;

Hashmap *hashmap_new(void);
Hashmap *hashmap_free(Hashmap *h);
int hashmap_put(Hashmap *h, const char *key, void *value); /* -EEXIST if present */
void *hashmap_get(Hashmap *h, const char *key);
void *hashmap_remove(Hashmap *h, const char *key);
size_t hashmap_size(Hashmap *h);

typedef struct HashmapIter {
        size_t bucket;
        void *entry;
} HashmapIter;
#define HASHMAP_ITER_INIT ((HashmapIter) {})
/* Returns the next value or NULL. Removing the current entry while iterating is allowed. */
void *hashmap_iterate(Hashmap *h, HashmapIter *i);

#define HASHMAP_FOREACH(v, h) for (HashmapIter _i_ = HASHMAP_ITER_INIT; ((v) = hashmap_iterate((h), &_i_)); )
