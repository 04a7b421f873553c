/* SPDX-License-Identifier: GPL-2.0 */
/* rmirror C shim: kernel helpers that are static inline or macros (so Rust cannot call them), and the
 * fixed C tables (block_device_operations, the sysfs attribute group) that call back into Rust. */
#ifndef RMIRROR_SHIM_H
#define RMIRROR_SHIM_H
#include <linux/types.h>
#include <linux/blk_types.h>

struct bio;
struct bio_set;
struct block_device;
struct gendisk;
struct socket;
struct task_struct;

/* Implemented in Rust (rust/driver/bindings/). `dev` is the gendisk's private_data. */
void rmirror_rs_submit_bio(void *dev, struct bio *bio);
int rmirror_rs_open(void *dev);
void rmirror_rs_mark_removing(void *dev);
ssize_t rmirror_rs_sysfs_show(void *dev, unsigned int attr, char *page);
ssize_t rmirror_rs_sysfs_store(void *dev, unsigned int attr, const char *buf, size_t len);
void rmirror_rs_clone_endio(void *req, u8 status);

/* Disks. */
struct gendisk *rmirror_disk_create(void *dev, int index, struct block_device *backing,
				    sector_t capacity, unsigned int max_sectors);
void rmirror_disk_destroy(struct gendisk *disk);
int rmirror_disk_begin_remove(struct gendisk *disk);
sector_t rmirror_bdev_nr_sectors(struct block_device *bdev);

/* Bios. */
struct bio_set *rmirror_bioset_create(void);
void rmirror_bioset_destroy(struct bio_set *bs);
void rmirror_bio_remap(struct bio *bio, struct block_device *bdev);
void rmirror_bio_copy_to_buf(struct bio *bio, void *buf, size_t len);
int rmirror_bio_submit_clone(struct bio *orig, struct block_device *bdev, struct bio_set *bs, void *req);
void rmirror_bio_endio(struct bio *bio, u8 status);
int rmirror_write_sync(struct block_device *bdev, sector_t sector, const void *buf, size_t len,
		       bool preflush, bool fua);

/* Kernel TCP sockets; addresses and ports in host byte order. */
int rmirror_sock_listen(u32 addr, u16 port, struct socket **res);
int rmirror_sock_accept(struct socket *lsock, struct socket **res);
int rmirror_sock_connect(u32 addr, u16 port, struct socket **res);
int rmirror_sock_send(struct socket *sock, const void *buf, size_t len, bool more);
int rmirror_sock_recv(struct socket *sock, void *buf, size_t len);
void rmirror_sock_shutdown(struct socket *sock);
void rmirror_sock_release(struct socket *sock);
int rmirror_sock_peer(struct socket *sock, u32 *addr, u16 *port);

/* Kernel threads. */
struct task_struct *rmirror_thread_start(int (*fn)(void *), void *data, const char *name);
int rmirror_thread_stop(struct task_struct *task);
unsigned int rmirror_noio_save(void);
void rmirror_noio_restore(unsigned int flags);
#endif
