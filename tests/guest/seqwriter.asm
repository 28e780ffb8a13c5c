; A boot sector that writes increasing sequence numbers to consecutive sectors
; of its boot disk, one sector per BIOS call: sector N holds N (32 bits, 128
; times), from sector 1 up to the disk's last sector. It then exits QEMU through
; the isa-debug-exit device at port 0xf4: status 1 when done, 3 on the first
; I/O error the BIOS reports (QEMU exits with (value << 1) | 1).
; nasm -f bin seqwriter.asm -o seqwriter.bin

bits 16
org 0x7c00

BUFFER equ 0x8000

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7c00
    sti
    cld
    mov [drive], dl

    ; The disk's size in sectors (INT 13h AH=48h: extended drive parameters).
    mov ah, 0x48
    mov si, params
    int 0x13
    jc failed

next:
    mov eax, [lba]
    cmp eax, [params.sectors]
    jae done
    mov di, BUFFER
    mov cx, 128
    rep stosd
    mov ah, 0x43              ; extended write, no verify
    xor al, al
    mov dl, [drive]
    mov si, packet
    int 0x13
    jc failed
    inc dword [lba]
    jmp next

done:
    mov al, 0
    out 0xf4, al
    hlt

failed:
    mov al, 1
    out 0xf4, al
    hlt

drive: db 0

align 4
packet:                       ; disk address packet
    db 16, 0
    dw 1                      ; sectors
    dw BUFFER, 0              ; offset, segment
lba:
    dd 1, 0

params:                       ; result buffer of AH=48h
    dw 26
    dw 0
    dd 0, 0, 0
.sectors:
    dd 0, 0
    dw 0

times 510 - ($ - $$) db 0
dw 0xaa55
